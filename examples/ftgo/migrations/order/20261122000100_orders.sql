-- The Order service's tables (SQLite and PostgreSQL alike).
CREATE TABLE ftgo_orders (
    id              BIGINT PRIMARY KEY,
    consumer_id     BIGINT NOT NULL,
    restaurant_id   BIGINT NOT NULL,
    line_items      TEXT   NOT NULL,
    total           BIGINT NOT NULL,
    state           TEXT   NOT NULL,
    reason          TEXT,
    create_saga_id  TEXT,
    cancel_saga_id  TEXT,
    created_at      BIGINT NOT NULL
);

-- The Order service's replica of restaurants and their menus, to validate and price orders.
CREATE TABLE ftgo_restaurant_menus (
    restaurant_id BIGINT NOT NULL,
    menu_item_id  TEXT   NOT NULL,
    name          TEXT   NOT NULL,
    price         BIGINT NOT NULL,
    PRIMARY KEY (restaurant_id, menu_item_id)
);

-- Order ids are handed out from here.
CREATE TABLE ftgo_order_ids (
    name TEXT PRIMARY KEY,
    next BIGINT NOT NULL
);
INSERT INTO ftgo_order_ids (name, next) VALUES ('orders', 1001);
