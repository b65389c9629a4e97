-- The Consumer service's tables.
CREATE TABLE ftgo_consumers (
    id      BIGINT PRIMARY KEY,
    name    TEXT   NOT NULL,
    blocked BIGINT NOT NULL
);
