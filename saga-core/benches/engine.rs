//! Micro-benchmarks of the engine's transition function and of message encode/decode.
//!
//! `cargo bench -p saga-core --bench engine`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use saga_core::definition::IncomingReply;
use saga_core::engine::{self, Pending, SagaEvent, SagaInstance};
use saga_core::message::headers;
use saga_core::{
    Command, Headers, Message, Reply, SagaDefinition, SagaId, Step, StepDefinition, Timestamp,
};
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize)]
struct Order {
    order_id: i64,
    consumer_id: i64,
    items: Vec<(String, u32)>,
    ticket: Option<i64>,
}

#[derive(Serialize, Deserialize, Command)]
#[command(channel = "participant", reply = Done)]
struct Work {
    order_id: i64,
    items: Vec<(String, u32)>,
}

#[derive(Serialize, Deserialize, Reply)]
struct Done {
    ticket: i64,
}

fn work(order: &Order) -> Work {
    Work {
        order_id: order.order_id,
        items: order.items.clone(),
    }
}

/// A CreateOrderSaga-shaped definition: six steps, two compensations, a pivot.
fn definition() -> SagaDefinition<Order> {
    let step = |name: &str, kind: u8| -> StepDefinition<Order> {
        match kind {
            0 => Step::compensatable::<Order>(name)
                .invoke(work)
                .on_reply(|o: &mut Order, d: &Done| o.ticket = Some(d.ticket))
                .compensate(work)
                .into(),
            1 => Step::pivot::<Order>(name).invoke(work).into(),
            _ => Step::retriable::<Order>(name).invoke(work).into(),
        }
    };
    SagaDefinition::builder("Bench")
        .step(Step::compensatable::<Order>("create").compensate(work))
        .step(step("verify", 0))
        .step(step("ticket", 0))
        .step(step("authorize", 1))
        .step(step("confirm", 2))
        .step(step("approve", 2))
        .build()
        .expect("valid")
}

fn data() -> Order {
    Order {
        order_id: 1001,
        consumer_id: 7,
        items: vec![("chicken-vindaloo".to_owned(), 2), ("naan".to_owned(), 1)],
        ticket: None,
    }
}

/// Runs a whole saga through the engine: start, then a success reply per step.
fn run_saga(definition: &SagaDefinition<Order>, reply: &IncomingReply) -> SagaInstance<Order> {
    let mut instance = engine::start(definition, SagaId::new(), data(), Timestamp(1))
        .expect("starts")
        .instance;
    while let Some(Pending::Reply { request_id }) = instance.state.pending {
        let event = SagaEvent::Reply {
            request_id,
            reply: reply.clone(),
        };
        instance = engine::transition(definition, &instance, &event, Timestamp(2))
            .expect("applies")
            .applied()
            .expect("not ignored")
            .instance;
    }
    instance
}

fn engine_benches(c: &mut Criterion) {
    let definition = definition();
    let reply = IncomingReply::from_reply(&Done { ticket: 5 }).expect("encodes");
    c.bench_function("engine: start a 6-step saga", |b| {
        b.iter(|| engine::start(black_box(&definition), SagaId::new(), data(), Timestamp(1)))
    });
    let waiting = engine::start(&definition, SagaId::new(), data(), Timestamp(1))
        .expect("starts")
        .instance;
    let Some(Pending::Reply { request_id }) = waiting.state.pending else {
        panic!("waits for a reply");
    };
    let event = SagaEvent::Reply {
        request_id,
        reply: reply.clone(),
    };
    c.bench_function("engine: one reply transition", |b| {
        b.iter(|| {
            engine::transition(
                black_box(&definition),
                black_box(&waiting),
                &event,
                Timestamp(2),
            )
        })
    });
    c.bench_function("engine: a whole saga (start + 5 replies)", |b| {
        b.iter(|| run_saga(black_box(&definition), &reply))
    });
}

fn message_benches(c: &mut Criterion) {
    let message = Message::new(
        "kitchenService",
        Headers::new()
            .with(headers::MESSAGE_TYPE, "CreateTicket")
            .with(headers::SAGA_ID, SagaId::new())
            .with(headers::SAGA_TYPE, "CreateOrderSaga")
            .with(headers::SAGA_STEP, "create_ticket")
            .with(headers::REQUEST_ID, 3)
            .with(headers::REPLY_TO, "orderService.sagaReplies"),
        serde_json::to_string(&work(&data())).expect("encodes"),
    );
    let encoded = serde_json::to_string(&message).expect("encodes");
    c.bench_function("message: encode envelope (JSON)", |b| {
        b.iter(|| serde_json::to_string(black_box(&message)))
    });
    c.bench_function("message: decode envelope (JSON)", |b| {
        b.iter(|| serde_json::from_str::<Message>(black_box(&encoded)))
    });
    c.bench_function("message: decode typed command payload", |b| {
        b.iter(|| black_box(&message).decode::<Work>())
    });
}

criterion_group!(benches, engine_benches, message_benches);
criterion_main!(benches);
