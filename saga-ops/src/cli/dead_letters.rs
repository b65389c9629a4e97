//! `saga dead-letters`: this database's dead letters, and with `--nats-url` those in NATS
//! JetStream's dead-letter stream. A NATS dead letter that is replayed or discarded leaves the
//! stream and is recorded, resolved, in this database's `saga_dead_letters` — who, when, why —
//! so every operator action on dead letters is in one place.

use std::io::Write;
use std::time::Duration;

use saga_core::ports::DeadLetter;
use saga_core::{Headers, Message, MessageId, Timestamp};
use saga_store::SqlSagaStore;
use saga_store::nats::{NatsAuth, NatsDeadLetter, NatsOptions, NatsTls, NatsTransport};

use super::output;
use super::{DeadLetterCommand, DeadLetterId, DeadLettersArgs, NatsArgs, actor, require_reason};
use crate::OpsError;

async fn nats(args: &NatsArgs) -> Result<Option<NatsTransport>, OpsError> {
    let Some(url) = args.nats_url.as_deref() else {
        return Ok(None);
    };
    let auth = match (&args.nats_creds, &args.nats_nkey) {
        (Some(creds), _) => NatsAuth::CredentialsFile(creds.clone()),
        (None, Some(seed)) => NatsAuth::NkeySeedFile(seed.clone()),
        (None, None) => NatsAuth::None,
    };
    let options = NatsOptions {
        stream: args.nats_stream.clone(),
        subject_prefix: args.nats_subject_prefix.clone(),
        connect_timeout: Duration::from_secs(5),
        auth,
        tls: NatsTls {
            ca_file: args.nats_ca.clone(),
            client_cert: args.nats_cert.clone(),
            client_key: args.nats_key.clone(),
            ..NatsTls::default()
        },
        ..NatsOptions::default()
    };
    // The transport's error names the server without its credentials.
    NatsTransport::connect(url, options)
        .await
        .map(Some)
        .map_err(|err| OpsError::Usage(err.to_string()))
}

fn need_nats(transport: Option<&NatsTransport>) -> Result<&NatsTransport, OpsError> {
    transport.ok_or_else(|| {
        OpsError::Usage("a nats: dead letter needs --nats-url (or SAGA_NATS_URL)".to_owned())
    })
}

fn nats_error(err: saga_core::ports::TransportError) -> OpsError {
    OpsError::Usage(format!("NATS: {err}"))
}

async fn nats_letter(transport: &NatsTransport, sequence: u64) -> Result<NatsDeadLetter, OpsError> {
    transport
        .dead_letters(sequence, 1)
        .await
        .map_err(nats_error)?
        .into_iter()
        .find(|l| l.sequence == sequence)
        .ok_or_else(|| OpsError::NotFound(format!("no dead letter nats:{sequence}")))
}

/// The NATS dead letter as this database records it.
fn as_dead_letter(args: &NatsArgs, letter: NatsDeadLetter) -> DeadLetter {
    let message = letter.message.unwrap_or_else(|| Message {
        id: MessageId::new(),
        destination: letter.channel.clone(),
        headers: Headers::new().with("x-unreadable", "the NATS message could not be read"),
        payload: String::new(),
    });
    DeadLetter {
        consumer: format!("nats:{}_DEAD", args.nats_stream),
        message,
        reason: letter.reason,
        at: Timestamp::now(),
    }
}

pub(super) async fn run(
    args: DeadLettersArgs,
    store: &SqlSagaStore,
    out: &mut dyn Write,
) -> Result<u8, OpsError> {
    let transport = nats(&args.nats).await?;
    match args.command {
        DeadLetterCommand::List { all, json } => {
            let letters = store.stored_dead_letters(0, 10_000, !all).await?;
            let from_nats = match &transport {
                Some(t) => t.dead_letters(0, 10_000).await.map_err(nats_error)?,
                None => Vec::new(),
            };
            match json {
                true => output::dead_letters_json(out, &letters, &from_nats)?,
                false => output::dead_letters_table(out, &letters, &from_nats)?,
            }
        }
        DeadLetterCommand::Show { id } => match id {
            DeadLetterId::Sql(id) => {
                let letter = store
                    .stored_dead_letter(id)
                    .await?
                    .ok_or_else(|| OpsError::NotFound(format!("no dead letter {id}")))?;
                output::dead_letter_text(out, &letter)?;
            }
            DeadLetterId::Nats(sequence) => {
                let letter = nats_letter(need_nats(transport.as_ref())?, sequence).await?;
                output::nats_dead_letter_text(out, &letter)?;
            }
        },
        DeadLetterCommand::Replay {
            id,
            reason,
            actor: who,
        } => {
            require_reason(&reason)?;
            let by = actor(who.as_ref());
            let message_id = match id {
                DeadLetterId::Sql(id) => store.replay_dead_letter(id, &by, &reason).await?,
                DeadLetterId::Nats(sequence) => {
                    let transport = need_nats(transport.as_ref())?;
                    let letter = nats_letter(transport, sequence).await?;
                    let message_id = transport
                        .replay_dead_letter(sequence)
                        .await
                        .map_err(nats_error)?;
                    let dead = as_dead_letter(&args.nats, letter);
                    store
                        .record_resolved_dead_letter(dead, Some(message_id), &by, &reason)
                        .await?;
                    message_id
                }
            };
            writeln!(
                out,
                "dead letter {} replayed as message {message_id}",
                show(id)
            )?;
        }
        DeadLetterCommand::Discard {
            id,
            reason,
            actor: who,
        } => {
            require_reason(&reason)?;
            let by = actor(who.as_ref());
            match id {
                DeadLetterId::Sql(id) => store.discard_dead_letter(id, &by, &reason).await?,
                DeadLetterId::Nats(sequence) => {
                    let transport = need_nats(transport.as_ref())?;
                    let letter = nats_letter(transport, sequence).await?;
                    transport
                        .discard_dead_letter(sequence)
                        .await
                        .map_err(nats_error)?;
                    let dead = as_dead_letter(&args.nats, letter);
                    store
                        .record_resolved_dead_letter(dead, None, &by, &reason)
                        .await?;
                }
            }
            writeln!(out, "dead letter {} discarded", show(id))?;
        }
    }
    Ok(0)
}

fn show(id: DeadLetterId) -> String {
    match id {
        DeadLetterId::Sql(id) => id.to_string(),
        DeadLetterId::Nats(sequence) => format!("nats:{sequence}"),
    }
}
