-- The Accounting service's tables.
CREATE TABLE ftgo_accounts (
    consumer_id  BIGINT PRIMARY KEY,
    card_limit   BIGINT NOT NULL,
    card_enabled BIGINT NOT NULL
);

-- One authorization per order.
CREATE TABLE ftgo_authorizations (
    order_id    BIGINT PRIMARY KEY,
    consumer_id BIGINT NOT NULL,
    amount      BIGINT NOT NULL,
    state       TEXT   NOT NULL
);
