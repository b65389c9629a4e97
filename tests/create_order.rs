//! CreateOrderSaga's test data: one order and the commands the saga sends for it, shared by
//! the step-by-step tests and the README's example test.

use ftgo::create_order::CreateOrderData;
use ftgo::messages::{AuthorizeCard, CreateTicket, LineItem, RejectOrder, ValidateOrderByConsumer};

/// The order.
pub const ORDER: i64 = 1001;
/// Who orders.
pub const CONSUMER: i64 = 7;
/// Where from.
pub const RESTAURANT: i64 = 3;
/// The order total, in cents.
pub const TOTAL: i64 = 2_450;

/// What is ordered.
pub fn items() -> Vec<LineItem> {
    vec![LineItem {
        menu_item_id: "chicken-vindaloo".to_owned(),
        quantity: 2,
    }]
}

/// The saga data for the order.
pub fn data() -> CreateOrderData {
    CreateOrderData::new(ORDER, CONSUMER, RESTAURANT, items(), TOTAL)
}

/// The consumer check the saga sends.
pub fn validate() -> ValidateOrderByConsumer {
    ValidateOrderByConsumer {
        consumer_id: CONSUMER,
        order_id: ORDER,
        order_total: TOTAL,
    }
}

/// The kitchen ticket the saga asks for.
pub fn create_ticket() -> CreateTicket {
    CreateTicket {
        order_id: ORDER,
        restaurant_id: RESTAURANT,
        line_items: items(),
    }
}

/// The card authorization the saga asks for.
pub fn authorize() -> AuthorizeCard {
    AuthorizeCard {
        consumer_id: CONSUMER,
        order_id: ORDER,
        order_total: TOTAL,
    }
}

/// The compensation of creating the order.
pub fn reject() -> RejectOrder {
    RejectOrder {
        order_id: ORDER,
        reason: "create order saga failed".to_owned(),
    }
}
