//! The FTGO order-creation example: the book's food-delivery system, built on saga.
//!
//! - [`messages`]: the commands and replies of the Order, Consumer, Kitchen and Accounting
//!   services;
//! - [`create_order`]: the CreateOrderSaga definition;
//! - [`services`]: the four services as participants, with in-memory state;
//! - [`system`]: all of it in one process.

pub mod create_order;
pub mod messages;
pub mod services;
pub mod system;
