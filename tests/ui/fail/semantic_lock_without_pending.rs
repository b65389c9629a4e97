use saga_core::SemanticLock;

#[derive(SemanticLock)]
pub enum TicketState {
    Accepted,
    Cancelled,
}

fn main() {}
