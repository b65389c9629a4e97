-- One saga's messages on a channel are handled one at a time, in order, however many
-- consumers the channel has: a row is handed out only when no older row of its channel has
-- the same `ordering_key` (a hash of the saga id). Rows queued before this migration keep
-- no order among themselves (their key is their id), as before.
ALTER TABLE saga_queue ADD COLUMN ordering_key BIGINT NOT NULL DEFAULT 0;
UPDATE saga_queue SET ordering_key = id;
CREATE INDEX saga_queue_by_key ON saga_queue (channel, ordering_key, id);
