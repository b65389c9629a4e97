-- Parallel groups. The steps of the group a saga is running, each with its request,
-- attempts and deadline (a JSON array; NULL outside a group).
ALTER TABLE saga_instances ADD COLUMN branches TEXT;
