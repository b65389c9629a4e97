-- The Kitchen service's tables.
CREATE TABLE ftgo_restaurants (
    id   BIGINT PRIMARY KEY,
    name TEXT   NOT NULL,
    open BIGINT NOT NULL
);

-- One ticket per order; its id is the order id.
CREATE TABLE ftgo_tickets (
    order_id      BIGINT PRIMARY KEY,
    restaurant_id BIGINT NOT NULL,
    line_items    TEXT   NOT NULL,
    state         TEXT   NOT NULL,
    updated_at    BIGINT NOT NULL
);
