-- The table of the typed PostgreSQL participant test (tests/typed_postgres.rs). Its `query!`
-- macros are checked against it; to refresh their offline data in tests/.sqlx, create it in
-- the `public` schema of a scratch database and build the test online (see that file).
CREATE TABLE IF NOT EXISTS typed_devices (
    id             UUID        PRIMARY KEY,
    spec           JSONB       NOT NULL,
    tags           TEXT[]      NOT NULL,
    state          TEXT        NOT NULL,
    registered_at  TIMESTAMPTZ NOT NULL,
    activated_at   TIMESTAMPTZ
);
