-- Spend: one authorization (budget) per run and the reservations of its
-- priced calls. Mirrors the SQLite driver's 00030 migration; keep the two in step.

-- +goose Up

-- authorization_id is bound to the run that presented it (UNIQUE run_id):
-- a budget is never shared between runs. Every operation locks this row
-- FOR UPDATE first, which serializes the reservations of one budget. The
-- last CHECK is the invariant every operation keeps; it makes an overspend
-- impossible even for a buggy writer.
CREATE TABLE spend_authorizations (
    authorization_id text        PRIMARY KEY CHECK (authorization_id <> ''),
    run_id           text        NOT NULL UNIQUE REFERENCES runs (run_id) ON DELETE CASCADE,
    mode             text        NOT NULL CHECK (mode IN ('delegated_budget', 'deny_all')),
    max_total_sats   bigint      NOT NULL CHECK (max_total_sats >= 0),
    spent_sats       bigint      NOT NULL DEFAULT 0 CHECK (spent_sats >= 0),
    reserved_sats    bigint      NOT NULL DEFAULT 0 CHECK (reserved_sats >= 0),
    expires_at       timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CHECK (spent_sats + reserved_sats <= max_total_sats)
);

-- One row per priced call (call_key) of an authorization. reservation_id is
-- derived from (authorization_id, call_key); id orders rows by creation.
CREATE TABLE spend_reservations (
    id               bigint      GENERATED ALWAYS AS IDENTITY,
    reservation_id   text        PRIMARY KEY,
    authorization_id text        NOT NULL REFERENCES spend_authorizations (authorization_id) ON DELETE CASCADE,
    run_id           text        NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    call_key         text        NOT NULL CHECK (call_key <> ''),
    amount_sats      bigint      NOT NULL CHECK (amount_sats > 0),
    committed_sats   bigint      NOT NULL DEFAULT 0 CHECK (committed_sats >= 0 AND committed_sats <= amount_sats),
    state            text        NOT NULL CHECK (state IN ('reserved', 'committed', 'released')),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (authorization_id, call_key)
);

CREATE INDEX spend_reservations_run_idx ON spend_reservations (run_id, id);

-- +goose Down

DROP TABLE spend_reservations;
DROP TABLE spend_authorizations;
