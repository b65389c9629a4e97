//! PostgreSQL `LISTEN/NOTIFY` → in-process wake-ups.
//!
//! Commits that add outbox or queue rows send a `NOTIFY` in the same transaction; this task
//! listens on a dedicated connection and wakes the relay and consumers. It is only a hint:
//! every worker also polls, so a lost notification (or a dropped listener connection) delays
//! work by at most one poll interval and loses nothing.

use std::time::Duration;

use sqlx::postgres::PgListener;

use crate::db::Database;
use crate::db::wakeups::Topic;

/// Starts the listener task of `database` (reconnecting with backoff until the pool closes).
pub(crate) fn spawn_listener(database: &Database, url: &str) {
    let database = database.clone();
    let url = url.to_owned();
    tokio::spawn(async move {
        let outbox = database.outbox_notify_channel();
        let queue = database.queue_notify_channel();
        let mut delay = Duration::from_millis(200);
        loop {
            if database.is_closed() {
                return;
            }
            match PgListener::connect(&url).await {
                Ok(mut listener) => {
                    if let Err(err) = listener.listen_all([outbox.as_str(), queue.as_str()]).await {
                        tracing::warn!(error = %err, "LISTEN failed; polling only until it works");
                    } else {
                        delay = Duration::from_millis(200);
                        loop {
                            match listener.try_recv().await {
                                Ok(Some(notification)) => {
                                    if notification.channel() == outbox {
                                        database.wakeups().wake(&Topic::Outbox);
                                    } else {
                                        database
                                            .wakeups()
                                            .wake(&Topic::Queue(notification.payload().to_owned()));
                                    }
                                }
                                Ok(None) => {
                                    // The connection was lost; sqlx reconnects on the next call.
                                    // Wake everyone in case a notification was missed.
                                    database.wakeups().wake(&Topic::Outbox);
                                }
                                Err(err) => {
                                    tracing::warn!(error = %err, "LISTEN connection failed; reconnecting");
                                    break;
                                }
                            }
                            if database.is_closed() {
                                return;
                            }
                        }
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, retry_in = ?delay, "cannot open the LISTEN connection");
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    });
}
