//! The demo `cargo run -p ftgo` runs: sample orders covering every outcome of both sagas,
//! and the refusals semantic locks produce, summarized in a table.

use std::fmt;
use std::time::{Duration, Instant};

use saga_core::SagaId;
use saga_core::engine::SagaStatus;
use saga_core::timeline::TimelineSummary;

use crate::app::{Ftgo, FtgoError, OrderView};
use crate::services::order::{NewLineItem, NewOrder, OrderError};

/// One sample order and the outcome it must reach.
#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    /// What it shows.
    pub label: &'static str,
    /// Who orders.
    pub consumer_id: i64,
    /// From where.
    pub restaurant_id: i64,
    /// What: `(menu item, quantity)`.
    pub items: &'static [(&'static str, i64)],
    /// The order's final state.
    pub expected_state: &'static str,
    /// Whether the demo cancels it once approved.
    pub cancel: bool,
}

/// The demo's orders.
pub const SCENARIOS: [Scenario; 6] = [
    Scenario {
        label: "approved",
        consumer_id: 1,
        restaurant_id: 2,
        items: &[("margherita", 1), ("tiramisu", 2)],
        expected_state: "APPROVED",
        cancel: false,
    },
    Scenario {
        label: "approved, then cancelled",
        consumer_id: 1,
        restaurant_id: 1,
        items: &[("chicken-vindaloo", 2), ("naan", 1)],
        expected_state: "CANCELLED",
        cancel: true,
    },
    Scenario {
        label: "consumer invalid",
        consumer_id: 666,
        restaurant_id: 1,
        items: &[("samosa", 2)],
        expected_state: "REJECTED",
        cancel: false,
    },
    Scenario {
        label: "kitchen refuses",
        consumer_id: 2,
        restaurant_id: 13,
        items: &[("soup", 1)],
        expected_state: "REJECTED",
        cancel: false,
    },
    Scenario {
        label: "card declined (limit)",
        consumer_id: 2,
        restaurant_id: 1,
        items: &[("chicken-vindaloo", 4)],
        expected_state: "REJECTED",
        cancel: false,
    },
    Scenario {
        label: "card declined (disabled)",
        consumer_id: 3,
        restaurant_id: 2,
        items: &[("margherita", 1)],
        expected_state: "REJECTED",
        cancel: false,
    },
];

/// One order's line in the report.
#[derive(Clone, Debug)]
pub struct Row {
    /// The scenario.
    pub scenario: Scenario,
    /// The order, as the API shows it.
    pub view: OrderView,
}

/// A request the services refused, and why.
#[derive(Clone, Debug)]
pub struct Refusal {
    /// What was asked.
    pub request: String,
    /// The refusal.
    pub reason: String,
}

/// What the demo did.
#[derive(Clone, Debug)]
pub struct DemoReport {
    /// One row per order.
    pub rows: Vec<Row>,
    /// Refused requests (expected: two).
    pub refusals: Vec<Refusal>,
    /// How long the sagas took, in total.
    pub elapsed: Duration,
}

impl DemoReport {
    /// Whether every order reached its expected state and both refusals happened.
    pub fn as_expected(&self) -> bool {
        self.rows
            .iter()
            .all(|row| row.view.state_name == row.scenario.expected_state)
            && self.refusals.len() == 2
    }
}

fn request(scenario: &Scenario) -> NewOrder {
    NewOrder {
        consumer_id: scenario.consumer_id,
        restaurant_id: scenario.restaurant_id,
        line_items: scenario
            .items
            .iter()
            .map(|(item, quantity)| NewLineItem {
                menu_item_id: (*item).to_owned(),
                quantity: *quantity,
            })
            .collect(),
    }
}

fn refusal(request: String, result: Result<SagaId, OrderError>) -> Result<Refusal, FtgoError> {
    match result {
        Err(err @ (OrderError::Locked(_) | OrderError::WrongState { .. })) => Ok(Refusal {
            request,
            reason: err.to_string(),
        }),
        Err(err) => Err(err.into()),
        Ok(saga_id) => Ok(Refusal {
            request,
            reason: format!("NOT refused: started saga {saga_id}"),
        }),
    }
}

/// Runs the demo on `ftgo` (whose workers must not be running yet), reporting progress
/// through `progress`.
pub async fn run(ftgo: &Ftgo, mut progress: impl FnMut(&str)) -> Result<DemoReport, FtgoError> {
    let started = Instant::now();
    let mut placed = Vec::new();
    for scenario in SCENARIOS {
        let order = ftgo.orders.place_order(&request(&scenario)).await?;
        progress(&format!(
            "placed order {} ({}): CreateOrderSaga {}",
            order.order_id, scenario.label, order.saga_id
        ));
        placed.push((scenario, order));
    }

    // The workers are not running yet, so every order is still APPROVAL_PENDING: a cancel
    // now meets the semantic lock.
    let mut refusals = Vec::new();
    let first = placed[0].1.order_id;
    refusals.push(refusal(
        format!("cancel order {first} while it is being created"),
        ftgo.orders.cancel_order(first).await,
    )?);

    ftgo.start_workers().await?;
    let create_sagas: Vec<SagaId> = placed.iter().map(|(_, order)| order.saga_id).collect();
    ftgo.wait_for_sagas(&create_sagas, Duration::from_secs(60), |done, total| {
        progress(&format!("CreateOrderSaga: {done}/{total} finished"));
    })
    .await?;

    let mut cancel_sagas = Vec::new();
    for (scenario, order) in &placed {
        if !scenario.cancel {
            continue;
        }
        // Two cancels at once: the first puts the order in CANCEL_PENDING, the second is refused.
        let (a, b) = tokio::join!(
            ftgo.orders.cancel_order(order.order_id),
            ftgo.orders.cancel_order(order.order_id)
        );
        let (won, lost) = if a.is_ok() { (a, b) } else { (b, a) };
        let saga_id = won?;
        progress(&format!(
            "cancelling order {}: CancelOrderSaga {saga_id}",
            order.order_id
        ));
        cancel_sagas.push(saga_id);
        refusals.push(refusal(
            format!("cancel order {} a second time, at once", order.order_id),
            lost,
        )?);
    }
    ftgo.wait_for_sagas(&cancel_sagas, Duration::from_secs(60), |done, total| {
        progress(&format!("CancelOrderSaga: {done}/{total} finished"));
    })
    .await?;

    let mut rows = Vec::new();
    for (scenario, order) in placed {
        if let Some(view) = ftgo.order_view(order.order_id).await? {
            rows.push(Row { scenario, view });
        }
    }
    Ok(DemoReport {
        rows,
        refusals,
        elapsed: started.elapsed(),
    })
}

impl fmt::Display for DemoReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<6} {:<25} {:<11} {:<20} {:<11} sagas",
            "order", "scenario", "order", "ticket", "card"
        )?;
        writeln!(f, "{}", "─".repeat(100))?;
        for row in &self.rows {
            let view = &row.view;
            let sagas: Vec<String> = view
                .sagas
                .iter()
                .map(|s| format!("{} {}", s.saga_type, s.status))
                .collect();
            let mark = if view.state_name == row.scenario.expected_state {
                ""
            } else {
                "  ← UNEXPECTED"
            };
            writeln!(
                f,
                "{:<6} {:<25} {:<11} {:<20} {:<11} {}{mark}",
                view.order.order_id,
                row.scenario.label,
                view.state_name,
                view.ticket_state.unwrap_or("-"),
                view.authorization_state.as_deref().unwrap_or("-"),
                sagas.join(", "),
            )?;
            for saga in &view.sagas {
                let summary = TimelineSummary::of(saga.history.iter().map(|entry| &entry.event));
                let (steps, undone) = (summary.forward_line(), summary.compensated_line());
                writeln!(f, "       {:<16} steps: {steps}", saga.saga_type)?;
                if !undone.is_empty() {
                    writeln!(f, "       {:<16} compensated: {undone}", "")?;
                }
            }
        }
        writeln!(f)?;
        writeln!(f, "Refused by semantic locks:")?;
        for refusal in &self.refusals {
            writeln!(f, "  {:<50} → {}", refusal.request, refusal.reason)?;
        }
        let sagas: usize = self.rows.iter().map(|r| r.view.sagas.len()).sum();
        let finished = self
            .rows
            .iter()
            .flat_map(|r| &r.view.sagas)
            .filter(|s| matches!(s.status, SagaStatus::Completed | SagaStatus::Compensated))
            .count();
        writeln!(f)?;
        write!(
            f,
            "{finished}/{sagas} sagas finished in {:.2} s; {}",
            self.elapsed.as_secs_f64(),
            if self.as_expected() {
                "every outcome as expected."
            } else {
                "SOME OUTCOMES WERE NOT AS EXPECTED."
            }
        )
    }
}
