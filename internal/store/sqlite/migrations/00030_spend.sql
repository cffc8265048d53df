-- Spend: one authorization (budget) per run and the reservations of its
-- priced calls. The PostgreSQL driver mirrors this file; keep the two in step.

-- +goose Up

-- authorization_id is bound to the run that presented it (UNIQUE run_id):
-- a budget is never shared between runs. The last CHECK is the invariant
-- every operation keeps; it makes an overspend impossible even for a buggy
-- writer, because the transaction that would break it fails.
CREATE TABLE spend_authorizations (
    authorization_id TEXT    NOT NULL PRIMARY KEY CHECK (authorization_id <> ''),
    run_id           TEXT    NOT NULL UNIQUE REFERENCES runs (run_id) ON DELETE CASCADE,
    mode             TEXT    NOT NULL CHECK (mode IN ('delegated_budget', 'deny_all')),
    max_total_sats   INTEGER NOT NULL CHECK (max_total_sats >= 0),
    spent_sats       INTEGER NOT NULL DEFAULT 0 CHECK (spent_sats >= 0),
    reserved_sats    INTEGER NOT NULL DEFAULT 0 CHECK (reserved_sats >= 0),
    expires_at       TEXT,
    created_at       TEXT    NOT NULL,
    updated_at       TEXT    NOT NULL,
    CHECK (spent_sats + reserved_sats <= max_total_sats)
);

-- One row per priced call (call_key) of an authorization. reservation_id is
-- derived from (authorization_id, call_key); id orders rows by creation.
CREATE TABLE spend_reservations (
    id               INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    reservation_id   TEXT    NOT NULL UNIQUE,
    authorization_id TEXT    NOT NULL REFERENCES spend_authorizations (authorization_id) ON DELETE CASCADE,
    run_id           TEXT    NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    call_key         TEXT    NOT NULL CHECK (call_key <> ''),
    amount_sats      INTEGER NOT NULL CHECK (amount_sats > 0),
    committed_sats   INTEGER NOT NULL DEFAULT 0 CHECK (committed_sats >= 0 AND committed_sats <= amount_sats),
    state            TEXT    NOT NULL CHECK (state IN ('reserved', 'committed', 'released')),
    created_at       TEXT    NOT NULL,
    updated_at       TEXT    NOT NULL,
    UNIQUE (authorization_id, call_key)
);

CREATE INDEX spend_reservations_run_idx ON spend_reservations (run_id, id);

-- +goose Down

DROP TABLE spend_reservations;
DROP TABLE spend_authorizations;
