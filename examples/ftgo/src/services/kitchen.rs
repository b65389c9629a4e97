//! The Kitchen service: tickets for orders. A ticket is created `CREATE_PENDING` (a semantic
//! lock held by CreateOrderSaga), confirmed to `AWAITING_ACCEPTANCE` or cancelled; cancelling
//! an accepted ticket goes through `CANCEL_PENDING` (held by CancelOrderSaga).

use saga_core::participant::{HandlerError, Participant};
use saga_core::{CommandFailed, SemanticLock, Timestamp};
use saga_store::{Conn, Database, DatabaseError, Tx, on_backend};
use serde::{Deserialize, Serialize};
use sqlx::{query, query_as, query_scalar};

use crate::messages::{
    BeginCancelTicket, CancelCreateTicket, ConfirmCancelTicket, ConfirmCreateTicket, CreateTicket,
    TicketCancelPending, TicketCancelUndone, TicketCancelled, TicketConfirmed, TicketCreated,
    UndoBeginCancelTicket, channels,
};
use crate::services::ServiceTime;

/// The life of a kitchen ticket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, SemanticLock)]
pub enum TicketState {
    /// Created by CreateOrderSaga, not yet confirmed.
    #[pending]
    CreatePending,
    /// Confirmed; the restaurant may accept it.
    AwaitingAcceptance,
    /// CancelOrderSaga is cancelling it.
    #[pending]
    CancelPending,
    /// Cancelled.
    Cancelled,
}

/// A restaurant of the sample data, as the kitchen knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SampleRestaurant {
    /// The id.
    pub id: i64,
    /// The name.
    pub name: &'static str,
    /// Whether it accepts tickets.
    pub open: bool,
    /// Whether someone is on shift to confirm them.
    pub staffed: bool,
}

/// The sample restaurants: Ajanta (1), Luigi's (2), the closed Night Owl (13), and Graveyard
/// Shift (21), which takes tickets but has nobody on shift to confirm them (its orders park
/// in `failed` at `confirm_ticket` until it is staffed and an operator retries them).
pub const SAMPLE_RESTAURANTS: [SampleRestaurant; 4] = [
    SampleRestaurant {
        id: 1,
        name: "Ajanta",
        open: true,
        staffed: true,
    },
    SampleRestaurant {
        id: 2,
        name: "Luigi's",
        open: true,
        staffed: true,
    },
    SampleRestaurant {
        id: 13,
        name: "Night Owl",
        open: false,
        staffed: false,
    },
    SampleRestaurant {
        id: 21,
        name: "Graveyard Shift",
        open: true,
        staffed: false,
    },
];

/// The Kitchen service.
#[derive(Clone, Debug)]
pub struct KitchenService {
    database: Database,
    service_time: ServiceTime,
}

fn now() -> i64 {
    i64::try_from(Timestamp::now().as_millis()).unwrap_or(i64::MAX)
}

impl KitchenService {
    /// Opens the service on its database: migrates and seeds the sample restaurants.
    pub async fn open(database: Database) -> Result<Self, DatabaseError> {
        database
            .run_migrations(sqlx::migrate!("migrations/kitchen"))
            .await?;
        let mut conn = database.acquire().await?;
        for restaurant in SAMPLE_RESTAURANTS {
            on_backend!(conn.conn(), |c| {
                query("INSERT INTO ftgo_restaurants (id, name, open, staffed) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
                    .bind(restaurant.id)
                    .bind(restaurant.name)
                    .bind(i64::from(restaurant.open))
                    .bind(i64::from(restaurant.staffed))
                    .execute(c)
                    .await
                    .map(drop)
            })?;
        }
        Ok(Self {
            database,
            service_time: ServiceTime::default(),
        })
    }

    /// The service's database.
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// Puts someone on shift at `restaurant_id` (or takes them off); `false` if there is no
    /// such restaurant.
    pub async fn set_staffed(
        &self,
        restaurant_id: i64,
        staffed: bool,
    ) -> Result<bool, sqlx::Error> {
        let mut conn = self.database.acquire().await?;
        let rows = on_backend!(conn.conn(), |c| {
            query("UPDATE ftgo_restaurants SET staffed = $1 WHERE id = $2")
                .bind(i64::from(staffed))
                .bind(restaurant_id)
                .execute(c)
                .await
                .map(|done| done.rows_affected())
        })?;
        Ok(rows == 1)
    }

    /// The state of the ticket for `order_id`, if there is one.
    pub async fn ticket_state(&self, order_id: i64) -> Result<Option<TicketState>, sqlx::Error> {
        let mut conn = self.database.acquire().await?;
        let state = stored_state(conn.conn(), order_id).await?;
        Ok(state.and_then(|name| TicketState::from_state_name(&name).ok()))
    }

    /// The same service, taking `time` more over each forward command of CreateOrderSaga.
    pub fn with_service_time(mut self, time: ServiceTime) -> Self {
        self.service_time = time;
        self
    }

    /// The Kitchen service as a participant.
    pub fn participant(&self) -> Participant<Tx> {
        let time = self.service_time;
        Participant::new("kitchen-service", channels::KITCHEN)
            .handle_async::<CreateTicket>(move |tx, cmd, _| {
                Box::pin(async move {
                    time.spend().await;
                    create_ticket(tx, cmd).await
                })
            })
            .handle_async::<ConfirmCreateTicket>(move |tx, cmd, _| {
                Box::pin(async move {
                    time.spend().await;
                    confirm_create_ticket(tx, cmd).await
                })
            })
            .handle_async::<CancelCreateTicket>(|tx, cmd, _| {
                Box::pin(cancel_create_ticket(tx, cmd))
            })
            .handle_async::<BeginCancelTicket>(|tx, cmd, _| Box::pin(begin_cancel_ticket(tx, cmd)))
            .handle_async::<UndoBeginCancelTicket>(|tx, cmd, _| {
                Box::pin(undo_begin_cancel_ticket(tx, cmd))
            })
            .handle_async::<ConfirmCancelTicket>(|tx, cmd, _| {
                Box::pin(confirm_cancel_ticket(tx, cmd))
            })
    }
}

/// The stored state of the ticket for `order_id`, if there is one.
async fn stored_state(conn: Conn<'_>, order_id: i64) -> Result<Option<String>, sqlx::Error> {
    on_backend!(conn, |c| {
        query_scalar("SELECT state FROM ftgo_tickets WHERE order_id = $1")
            .bind(order_id)
            .fetch_optional(c)
            .await
    })
}

async fn ticket(tx: &mut Tx, order_id: i64) -> Result<Option<TicketState>, HandlerError> {
    let state = stored_state(tx.conn(), order_id).await?;
    Ok(state
        .map(|name| TicketState::from_state_name(&name))
        .transpose()?)
}

async fn set_ticket(tx: &mut Tx, order_id: i64, state: TicketState) -> Result<(), HandlerError> {
    on_backend!(tx.conn(), |c| {
        query("UPDATE ftgo_tickets SET state = $1, updated_at = $2 WHERE order_id = $3")
            .bind(state.state_name())
            .bind(now())
            .bind(order_id)
            .execute(c)
            .await
            .map(drop)
    })?;
    Ok(())
}

/// Moves the ticket from `from` to `to`, through its semantic lock (see
/// [`SemanticLock::advance`]).
async fn move_ticket(
    tx: &mut Tx,
    order_id: i64,
    from: TicketState,
    to: TicketState,
) -> Result<(), HandlerError> {
    let Some(mut state) = ticket(tx, order_id).await? else {
        return Err(HandlerError::refused(format!(
            "no ticket for order {order_id}"
        )));
    };
    match state
        .advance(order_id, from, to)
        .map_err(CommandFailed::from)?
    {
        true => set_ticket(tx, order_id, state).await,
        false => Ok(()),
    }
}

async fn create_ticket(tx: &mut Tx, cmd: CreateTicket) -> Result<TicketCreated, HandlerError> {
    let restaurant: Option<(String, i64)> = on_backend!(tx.conn(), |c| {
        query_as("SELECT name, open FROM ftgo_restaurants WHERE id = $1")
            .bind(cmd.restaurant_id)
            .fetch_optional(c)
            .await
    })?;
    match restaurant {
        None => {
            return Err(HandlerError::refused(format!(
                "unknown restaurant {}",
                cmd.restaurant_id
            )));
        }
        Some((name, 0)) => {
            return Err(HandlerError::refused(format!(
                "restaurant {} ({name}) is closed",
                cmd.restaurant_id
            )));
        }
        Some(_) => {}
    }
    if let Some(existing) = ticket(tx, cmd.order_id).await? {
        return match existing {
            TicketState::CreatePending => Ok(TicketCreated {
                ticket_id: cmd.order_id,
            }),
            other => Err(HandlerError::refused(format!(
                "the ticket for order {} is already {}",
                cmd.order_id,
                other.state_name()
            ))),
        };
    }
    let items = serde_json::to_string(&cmd.line_items)?;
    on_backend!(tx.conn(), |c| {
        query(
            "INSERT INTO ftgo_tickets (order_id, restaurant_id, line_items, state, updated_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(cmd.order_id)
        .bind(cmd.restaurant_id)
        .bind(items.as_str())
        .bind(TicketState::CreatePending.state_name())
        .bind(now())
        .execute(c)
        .await
        .map(drop)
    })?;
    Ok(TicketCreated {
        ticket_id: cmd.order_id,
    })
}

async fn confirm_create_ticket(
    tx: &mut Tx,
    cmd: ConfirmCreateTicket,
) -> Result<TicketConfirmed, HandlerError> {
    // A resent confirmation (its first reply was lost) can find the ticket being cancelled
    // by CancelOrderSaga since: only a confirmed ticket gets there, so it was confirmed before.
    if let Some(TicketState::CancelPending | TicketState::Cancelled) =
        ticket(tx, cmd.ticket_id).await?
    {
        return Ok(TicketConfirmed);
    }
    let staffing: Option<(i64, String, i64)> = on_backend!(tx.conn(), |c| {
        query_as(
            "SELECT r.id, r.name, r.staffed FROM ftgo_tickets t \
             JOIN ftgo_restaurants r ON r.id = t.restaurant_id WHERE t.order_id = $1",
        )
        .bind(cmd.ticket_id)
        .fetch_optional(c)
        .await
    })?;
    if let Some((id, name, 0)) = staffing {
        return Err(HandlerError::refused(format!(
            "restaurant {id} ({name}) has nobody on shift to confirm tickets"
        )));
    }
    move_ticket(
        tx,
        cmd.ticket_id,
        TicketState::CreatePending,
        TicketState::AwaitingAcceptance,
    )
    .await?;
    Ok(TicketConfirmed)
}

async fn cancel_create_ticket(
    tx: &mut Tx,
    cmd: CancelCreateTicket,
) -> Result<TicketCancelled, HandlerError> {
    // Nothing to cancel is fine: a compensation must tolerate "it never happened".
    if ticket(tx, cmd.order_id).await?.is_some() {
        move_ticket(
            tx,
            cmd.order_id,
            TicketState::CreatePending,
            TicketState::Cancelled,
        )
        .await?;
    }
    Ok(TicketCancelled)
}

async fn begin_cancel_ticket(
    tx: &mut Tx,
    cmd: BeginCancelTicket,
) -> Result<TicketCancelPending, HandlerError> {
    move_ticket(
        tx,
        cmd.order_id,
        TicketState::AwaitingAcceptance,
        TicketState::CancelPending,
    )
    .await?;
    Ok(TicketCancelPending)
}

async fn undo_begin_cancel_ticket(
    tx: &mut Tx,
    cmd: UndoBeginCancelTicket,
) -> Result<TicketCancelUndone, HandlerError> {
    move_ticket(
        tx,
        cmd.order_id,
        TicketState::CancelPending,
        TicketState::AwaitingAcceptance,
    )
    .await?;
    Ok(TicketCancelUndone)
}

async fn confirm_cancel_ticket(
    tx: &mut Tx,
    cmd: ConfirmCancelTicket,
) -> Result<TicketCancelled, HandlerError> {
    move_ticket(
        tx,
        cmd.order_id,
        TicketState::CancelPending,
        TicketState::Cancelled,
    )
    .await?;
    Ok(TicketCancelled)
}
