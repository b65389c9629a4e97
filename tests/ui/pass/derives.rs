use saga_core::{Command, Reply, ReplyOutcome, SemanticLock};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Command)]
#[command(channel = "kitchenService", reply = TicketCreated)]
pub struct CreateTicket {
    pub order_id: i64,
}

#[derive(Serialize, Deserialize, Reply)]
pub struct TicketCreated {
    pub ticket_id: i64,
}

#[derive(Serialize, Deserialize, Reply)]
#[reply(failure)]
pub struct Refused {
    pub reason: String,
}

#[derive(Serialize, Deserialize, Reply)]
pub enum Verdict {
    #[success]
    Approved,
    #[failure]
    Declined { reason: String },
    #[failure]
    Unknown(u32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, SemanticLock)]
pub enum TicketState {
    #[pending]
    CreatePending,
    AwaitingAcceptance,
    #[pending]
    CancelPending,
    Cancelled,
}

fn main() {
    assert_eq!(<CreateTicket as Command>::TYPE, "CreateTicket");
    assert_eq!(<CreateTicket as Command>::CHANNEL, "kitchenService");
    assert_eq!(<TicketCreated as Reply>::TYPE, "TicketCreated");
    assert_eq!(TicketCreated { ticket_id: 1 }.outcome(), ReplyOutcome::Success);
    let refused = Refused { reason: "closed".into() };
    assert_eq!(refused.outcome(), ReplyOutcome::Failure);
    assert_eq!(refused.failure_reason().as_deref(), Some("closed"));
    assert_eq!(Verdict::Approved.outcome(), ReplyOutcome::Success);
    assert_eq!(Verdict::Approved.failure_reason(), None);
    let declined = Verdict::Declined { reason: "limit".into() };
    assert_eq!(declined.failure_reason().as_deref(), Some("limit"));
    assert_eq!(Verdict::Unknown(3).outcome(), ReplyOutcome::Failure);
    assert!(Verdict::Unknown(3).failure_reason().is_some());

    assert_eq!(<TicketState as SemanticLock>::RECORD, "Ticket");
    assert!(TicketState::CreatePending.is_pending());
    assert!(!TicketState::Cancelled.is_pending());
    assert_eq!(TicketState::CreatePending.state_name(), "CREATE_PENDING");
    let mut state = TicketState::CreatePending;
    let err = state.transition(9, TicketState::Cancelled).unwrap_err();
    assert_eq!(err.to_string(), "Ticket 9 is locked in state CREATE_PENDING by a saga in progress");
    state.release(TicketState::AwaitingAcceptance).unwrap();
    assert_eq!(state, TicketState::AwaitingAcceptance);
}
