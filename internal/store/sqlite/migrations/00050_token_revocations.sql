-- Sync token revocations, shared by every replica, and an index for the
-- worker projector's candidate scan. The PostgreSQL driver mirrors this
-- file; keep the two in step.

-- +goose Up

-- One row per revoked jti. expires_at is the token's exp: after it the
-- token fails as expired anyway, so retention deletes the row.
CREATE TABLE revoked_tokens (
    jti        TEXT NOT NULL PRIMARY KEY CHECK (jti <> ''),
    expires_at TEXT NOT NULL,
    reason     TEXT NOT NULL DEFAULT '',
    revoked_at TEXT NOT NULL
);

CREATE INDEX revoked_tokens_expires_at_idx ON revoked_tokens (expires_at);

-- The worker projector pages through codex_workers in (updated_at,
-- worker_id) order; without an index every page scans and sorts the whole
-- table. worker_id is in the key so ties are read in order as well
-- (codex_workers is a rowid table, so its TEXT primary key is not
-- implicitly part of the index).
CREATE INDEX codex_workers_updated_at_idx ON codex_workers (updated_at, worker_id);

-- +goose Down

DROP INDEX codex_workers_updated_at_idx;
DROP INDEX revoked_tokens_expires_at_idx;
DROP TABLE revoked_tokens;
