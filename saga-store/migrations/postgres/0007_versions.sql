-- Definition versions. The steps an instance moved to a newer version does not run (a JSON
-- array of step names; NULL when none), and what each recorded definition version is for:
-- `current`, `retired`, or `migrated to <version>`.
ALTER TABLE saga_instances ADD COLUMN skip_steps TEXT;
ALTER TABLE saga_definitions ADD COLUMN role TEXT NOT NULL DEFAULT 'current';
