-- Codex workers: durable records of remote Codex sessions and their
-- append-only event logs. Mirrors the SQLite driver's 00020 migration; keep
-- the two in step.

-- +goose Up

CREATE TABLE codex_workers (
    -- Byte order (as SQLite), so that ListWorkerIDs pages the same way on
    -- both drivers whatever the database's default collation.
    worker_id         text        COLLATE "C" PRIMARY KEY CHECK (worker_id <> ''),
    -- "user:<id>" or "guest:<scope>" from the signed claims of the create.
    owner_sub         text        NOT NULL CHECK (owner_sub <> ''),
    status            text        NOT NULL DEFAULT 'starting'
        CHECK (status IN ('starting', 'running', 'stopping', 'stopped', 'failed')),
    latest_seq        bigint      NOT NULL DEFAULT 0 CHECK (latest_seq >= 0),
    workspace_ref     text        NOT NULL DEFAULT '',
    codex_home_ref    text        NOT NULL DEFAULT '',
    adapter           text        NOT NULL DEFAULT '',
    -- json (not jsonb) keeps the canonical text byte for byte, which the
    -- create replay compares.
    metadata          json        NOT NULL DEFAULT '{}',
    -- Last sign of life from the worker itself; NULL until the first one.
    last_heartbeat_at timestamptz,
    -- Creation or the last reattach.
    started_at        timestamptz NOT NULL,
    stopped_at        timestamptz,
    stopped_reason    text        NOT NULL DEFAULT '',
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL
);

CREATE INDEX codex_workers_owner_idx ON codex_workers (owner_sub);

-- seq is gap-free per worker: it is allocated from codex_workers.latest_seq
-- under the worker's row lock, in the transaction that inserts the row.
CREATE TABLE codex_worker_events (
    worker_id       text        COLLATE "C" NOT NULL REFERENCES codex_workers (worker_id) ON DELETE CASCADE,
    seq             bigint      NOT NULL CHECK (seq > 0),
    event_type      text        NOT NULL CHECK (left(event_type, 7) = 'worker.' AND length(event_type) > 7),
    payload         json        NOT NULL,
    idempotency_key text,
    traceparent     text        NOT NULL DEFAULT '',
    tracestate      text        NOT NULL DEFAULT '',
    request_id      text        NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL,
    PRIMARY KEY (worker_id, seq)
);

CREATE UNIQUE INDEX codex_worker_events_idempotency_idx
    ON codex_worker_events (worker_id, idempotency_key) WHERE idempotency_key IS NOT NULL;

-- +goose Down

DROP TABLE codex_worker_events;
DROP TABLE codex_workers;
