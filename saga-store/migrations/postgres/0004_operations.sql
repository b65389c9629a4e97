-- Operating sagas. Orchestrators record the definitions they run, so tools that do not have
-- the sagas' Rust types (the `saga` CLI, the console) can draw a saga's graph and reach its
-- orchestrator: operator requests go through the outbox to `reply_channel`. Dead letters say
-- who resolved them.
CREATE TABLE saga_definitions (
    saga_type     TEXT   NOT NULL,
    version       TEXT   NOT NULL,
    reply_channel TEXT   NOT NULL,
    graph         JSONB  NOT NULL,
    registered_at BIGINT NOT NULL,
    PRIMARY KEY (saga_type, version)
);

ALTER TABLE saga_dead_letters ADD COLUMN resolved_by TEXT;

-- `saga list` pages newest first.
CREATE INDEX saga_instances_by_created ON saga_instances (created_at);
