-- Typed columns on PostgreSQL: ids are `uuid` and JSON is `jsonb`, so operators can query
-- saga data with PostgreSQL's JSON operators (`SELECT data->>'order_id' FROM saga_instances`)
-- and index it. Existing rows are converted in place. Payloads stay `TEXT`: a dead letter must
-- keep a payload that is not JSON.

DROP VIEW saga_stalled;

ALTER TABLE saga_instances
    ALTER COLUMN saga_id TYPE uuid USING saga_id::uuid,
    ALTER COLUMN completed_steps TYPE jsonb USING completed_steps::jsonb,
    ALTER COLUMN data TYPE jsonb USING data::jsonb;

ALTER TABLE saga_history
    ALTER COLUMN saga_id TYPE uuid USING saga_id::uuid,
    ALTER COLUMN event TYPE jsonb USING event::jsonb;

ALTER TABLE saga_outbox
    ALTER COLUMN message_id TYPE uuid USING message_id::uuid,
    ALTER COLUMN headers TYPE jsonb USING headers::jsonb;

ALTER TABLE saga_received
    ALTER COLUMN message_id TYPE uuid USING message_id::uuid;

ALTER TABLE saga_dead_letters
    ALTER COLUMN message_id TYPE uuid USING message_id::uuid,
    ALTER COLUMN headers TYPE jsonb USING headers::jsonb,
    ALTER COLUMN replay_message_id TYPE uuid USING replay_message_id::uuid;

ALTER TABLE saga_locks
    ALTER COLUMN saga_id TYPE uuid USING saga_id::uuid;

ALTER TABLE saga_queue
    ALTER COLUMN message_id TYPE uuid USING message_id::uuid,
    ALTER COLUMN headers TYPE jsonb USING headers::jsonb;

CREATE VIEW saga_stalled AS
SELECT saga_id, saga_type, status, current_step, deadline, updated_at,
       CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT) - COALESCE(deadline, updated_at)
           AS idle_ms
FROM saga_instances
WHERE status IN ('running', 'compensating')
  AND (deadline IS NULL OR deadline < CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT));
