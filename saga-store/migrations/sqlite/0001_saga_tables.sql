-- saga-store schema, SQLite. Times are milliseconds since the Unix epoch; JSON is TEXT.

-- One row per saga instance: where it is, its data, and an optimistic-concurrency version.
CREATE TABLE saga_instances (
    saga_id             TEXT    PRIMARY KEY NOT NULL,
    saga_type           TEXT    NOT NULL,
    definition_version  TEXT    NOT NULL,
    status              TEXT    NOT NULL,
    direction           TEXT    NOT NULL,
    current_step        TEXT,
    pending_kind        TEXT,
    pending_request_id  INTEGER,
    deadline            INTEGER,
    attempt             INTEGER NOT NULL,
    completed_steps     TEXT    NOT NULL,
    compensation_reason TEXT,
    last_error          TEXT,
    next_request_id     INTEGER NOT NULL,
    data                TEXT    NOT NULL,
    version             INTEGER NOT NULL,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL
);
CREATE INDEX saga_instances_by_status ON saga_instances (status, saga_type);

-- The append-only timeline of every saga.
CREATE TABLE saga_history (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    saga_id TEXT    NOT NULL,
    at      INTEGER NOT NULL,
    event   TEXT    NOT NULL
);
CREATE INDEX saga_history_by_saga ON saga_history (saga_id, id);

-- Step deadlines and retry backoffs.
CREATE TABLE saga_timers (
    saga_id    TEXT    NOT NULL,
    kind       TEXT    NOT NULL,
    request_id INTEGER NOT NULL,
    attempt    INTEGER NOT NULL,
    due        INTEGER NOT NULL,
    PRIMARY KEY (saga_id, kind, request_id, attempt)
);
CREATE INDEX saga_timers_by_due ON saga_timers (due);

-- The transactional outbox: written with the state change, published by the relay.
CREATE TABLE saga_outbox (
    sequence     INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id   TEXT    NOT NULL UNIQUE,
    destination  TEXT    NOT NULL,
    headers      TEXT    NOT NULL,
    payload      TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    published_at INTEGER
);
CREATE INDEX saga_outbox_unpublished ON saga_outbox (sequence) WHERE published_at IS NULL;
CREATE INDEX saga_outbox_published ON saga_outbox (published_at) WHERE published_at IS NOT NULL;

-- Messages each consumer has processed: the deduplication record.
CREATE TABLE saga_received (
    consumer    TEXT    NOT NULL,
    message_id  TEXT    NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (consumer, message_id)
);
CREATE INDEX saga_received_by_time ON saga_received (received_at);

-- Messages that could not be processed, with the reason.
CREATE TABLE saga_dead_letters (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    consumer    TEXT    NOT NULL,
    message_id  TEXT    NOT NULL,
    destination TEXT    NOT NULL,
    headers     TEXT    NOT NULL,
    payload     TEXT    NOT NULL,
    reason      TEXT    NOT NULL,
    at          INTEGER NOT NULL
);

-- Semantic locks: which saga holds which business resource.
CREATE TABLE saga_locks (
    resource  TEXT    PRIMARY KEY NOT NULL,
    saga_id   TEXT    NOT NULL,
    state     TEXT    NOT NULL,
    locked_at INTEGER NOT NULL
);

-- The SQL-table transport: a durable queue per channel.
CREATE TABLE saga_queue (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    channel     TEXT    NOT NULL,
    message_id  TEXT    NOT NULL,
    headers     TEXT    NOT NULL,
    payload     TEXT    NOT NULL,
    enqueued_at INTEGER NOT NULL,
    visible_at  INTEGER NOT NULL,
    deliveries  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX saga_queue_by_channel ON saga_queue (channel, id);
