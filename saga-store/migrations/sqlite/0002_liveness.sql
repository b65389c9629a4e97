-- Liveness: every wait has a deadline, singleton roles hold expiring leases, dead letters
-- can be replayed or discarded.

-- A saga's deadline is its one timer: the timer loop fires the instances whose deadline has
-- passed (a reply timeout or a retry backoff, per pending_kind), so no separate timer rows
-- are written. saga_timers is gone; its timers were always the instances' deadlines too.
DROP TABLE saga_timers;
CREATE INDEX saga_instances_by_deadline ON saga_instances (deadline) WHERE deadline IS NOT NULL;

-- Singleton roles (the outbox relay of a database): a holder renews its lease while it
-- works; when it stops renewing — dead or hung — the lease expires and another takes over.
CREATE TABLE saga_leases (
    name       TEXT    PRIMARY KEY NOT NULL,
    holder     TEXT    NOT NULL,
    expires_at INTEGER  NOT NULL
);

-- Dead letters: replayed (back on their channel under a new message id) or discarded, by
-- whom and why.
ALTER TABLE saga_dead_letters ADD COLUMN resolved_at INTEGER;
ALTER TABLE saga_dead_letters ADD COLUMN resolution TEXT;
ALTER TABLE saga_dead_letters ADD COLUMN resolution_reason TEXT;
ALTER TABLE saga_dead_letters ADD COLUMN replay_message_id TEXT;
CREATE INDEX saga_dead_letters_unresolved ON saga_dead_letters (id) WHERE resolved_at IS NULL;


-- Running sagas that wait without a deadline, or whose deadline has passed, with how long
-- (ms) they have waited: `SELECT * FROM saga_stalled WHERE idle_ms > 900000` lists what the
-- watchdog would report (it also knows which steps wait without a deadline by design).
CREATE VIEW saga_stalled AS
SELECT saga_id, saga_type, status, current_step, deadline, updated_at,
       CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) - COALESCE(deadline, updated_at)
           AS idle_ms
FROM saga_instances
WHERE status IN ('running', 'compensating')
  AND (deadline IS NULL OR deadline < CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
