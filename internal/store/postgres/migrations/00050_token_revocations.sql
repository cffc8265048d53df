-- Sync token revocations, shared by every replica, and an index for the
-- worker projector's candidate scan. Mirrors the SQLite driver's 00050
-- migration; keep the two in step.

-- +goose Up

-- One row per revoked jti. expires_at is the token's exp: after it the
-- token fails as expired anyway, so retention deletes the row.
CREATE TABLE revoked_tokens (
    jti        text        PRIMARY KEY CHECK (jti <> ''),
    expires_at timestamptz NOT NULL,
    reason     text        NOT NULL DEFAULT '',
    revoked_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX revoked_tokens_expires_at_idx ON revoked_tokens (expires_at);

-- The worker projector pages through codex_workers in (updated_at,
-- worker_id) order; without an index every page scans and sorts the whole
-- table. worker_id is in the key so that ties are read in order too.
CREATE INDEX codex_workers_updated_at_idx ON codex_workers (updated_at, worker_id);

-- +goose Down

DROP INDEX codex_workers_updated_at_idx;
DROP INDEX revoked_tokens_expires_at_idx;
DROP TABLE revoked_tokens;
