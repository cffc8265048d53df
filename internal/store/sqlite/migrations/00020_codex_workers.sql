-- Codex workers: durable records of remote Codex sessions and their
-- append-only event logs. The PostgreSQL driver mirrors this file; keep the
-- two in step. Timestamps and JSON follow 00001 (fixed-width UTC text,
-- canonical JSON text).

-- +goose Up

CREATE TABLE codex_workers (
    worker_id         TEXT    NOT NULL PRIMARY KEY CHECK (worker_id <> ''),
    -- "user:<id>" or "guest:<scope>" from the signed claims of the create.
    owner_sub         TEXT    NOT NULL CHECK (owner_sub <> ''),
    status            TEXT    NOT NULL DEFAULT 'starting'
        CHECK (status IN ('starting', 'running', 'stopping', 'stopped', 'failed')),
    latest_seq        INTEGER NOT NULL DEFAULT 0 CHECK (latest_seq >= 0),
    workspace_ref     TEXT    NOT NULL DEFAULT '',
    codex_home_ref    TEXT    NOT NULL DEFAULT '',
    adapter           TEXT    NOT NULL DEFAULT '',
    metadata_json     TEXT    NOT NULL DEFAULT '{}',
    -- Last sign of life from the worker itself; NULL until the first one.
    last_heartbeat_at TEXT,
    -- Creation or the last reattach.
    started_at        TEXT    NOT NULL,
    stopped_at        TEXT,
    stopped_reason    TEXT    NOT NULL DEFAULT '',
    created_at        TEXT    NOT NULL,
    updated_at        TEXT    NOT NULL
);

CREATE INDEX codex_workers_owner_idx ON codex_workers (owner_sub);

-- seq is gap-free per worker: it is allocated from codex_workers.latest_seq
-- in the transaction that inserts the row.
CREATE TABLE codex_worker_events (
    worker_id       TEXT    NOT NULL REFERENCES codex_workers (worker_id) ON DELETE CASCADE,
    seq             INTEGER NOT NULL CHECK (seq > 0),
    event_type      TEXT    NOT NULL CHECK (substr(event_type, 1, 7) = 'worker.' AND length(event_type) > 7),
    payload         TEXT    NOT NULL,
    idempotency_key TEXT    NOT NULL DEFAULT '', -- '' = none
    traceparent     TEXT    NOT NULL DEFAULT '',
    tracestate      TEXT    NOT NULL DEFAULT '',
    request_id      TEXT    NOT NULL DEFAULT '',
    created_at      TEXT    NOT NULL,
    PRIMARY KEY (worker_id, seq)
);

CREATE UNIQUE INDEX codex_worker_events_idempotency_key_idx
    ON codex_worker_events (worker_id, idempotency_key) WHERE idempotency_key <> '';

-- +goose Down

DROP TABLE codex_worker_events;
DROP TABLE codex_workers;
