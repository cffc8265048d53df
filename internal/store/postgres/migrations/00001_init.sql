-- Initial oaruntime schema. Every object is created unqualified: the driver
-- sets search_path to its schema, so one database can host several isolated
-- installations (and tests) side by side.

-- +goose Up
CREATE TABLE runs (
    run_id                  text        PRIMARY KEY CHECK (run_id <> ''),
    thread_id               text        NOT NULL,
    owner_sub               text        NOT NULL,
    status                  text        NOT NULL DEFAULT 'created'
        CHECK (status IN ('created', 'running', 'canceling', 'succeeded', 'failed', 'canceled')),
    latest_seq              bigint      NOT NULL DEFAULT 0 CHECK (latest_seq >= 0),
    -- head_hash is the event_hash of seq latest_seq, kept on the run so that
    -- the chain continues after retention pruned every event.
    head_hash               text        NOT NULL DEFAULT '',
    -- json (not jsonb) keeps the canonical text byte for byte, which the
    -- hash chain and idempotency comparisons depend on.
    provider                json,
    tools                   json,
    authorization_doc       json,
    output_schema           json,
    metadata                json,
    terminal_reason_class   text        NOT NULL DEFAULT '',
    terminal_reason         text        NOT NULL DEFAULT '',
    terminal_at             timestamptz,
    last_processed_frame_id bigint      NOT NULL DEFAULT 0,
    retention_floor_seq     bigint      NOT NULL DEFAULT 0,
    recovery_attempts       integer     NOT NULL DEFAULT 0,
    last_recovery_at        timestamptz,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX runs_thread_idx ON runs (thread_id);
-- Executors scan non-terminal runs for work; terminal runs are the bulk of the table.
CREATE INDEX runs_active_idx ON runs (updated_at)
    WHERE status IN ('created', 'running', 'canceling');

CREATE TABLE run_events (
    run_id          text        NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    seq             bigint      NOT NULL CHECK (seq > 0),
    event_type      text        NOT NULL CHECK (event_type <> ''),
    payload         json        NOT NULL,
    prev_hash       text        NOT NULL DEFAULT '',
    event_hash      text        NOT NULL,
    idempotency_key text,
    traceparent     text        NOT NULL DEFAULT '',
    tracestate      text        NOT NULL DEFAULT '',
    request_id      text        NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, seq)
);

CREATE UNIQUE INDEX run_events_idempotency_idx ON run_events (run_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX run_events_type_idx ON run_events (run_id, event_type, seq);

CREATE TABLE frames (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id       text        NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    frame_id     text        NOT NULL CHECK (frame_id <> ''),
    frame_type   text        NOT NULL,
    payload      json        NOT NULL,
    payload_hash text        NOT NULL,
    traceparent  text        NOT NULL DEFAULT '',
    tracestate   text        NOT NULL DEFAULT '',
    request_id   text        NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (run_id, frame_id)
);

CREATE INDEX frames_run_idx ON frames (run_id, id);

-- One lease row per run, created with the run, so that claimers can lock it
-- with FOR UPDATE SKIP LOCKED even when the run was never leased.
CREATE TABLE run_leases (
    run_id       text        PRIMARY KEY REFERENCES runs (run_id) ON DELETE CASCADE,
    state        text        NOT NULL DEFAULT 'free'
        CHECK (state IN ('free', 'held', 'released', 'reclaimed')),
    owner        text        NOT NULL DEFAULT '',
    generation   bigint      NOT NULL DEFAULT 0,
    expires_at   timestamptz,
    heartbeat_at timestamptz,
    acquired_at  timestamptz,
    -- seq of the last event appended under a valid fence (executor progress).
    last_progress_seq bigint NOT NULL DEFAULT 0,
    -- seq of the run.executor_lost appended by the last reclaim; progress
    -- after it restarts runs.recovery_attempts at 1 on the next reclaim.
    lost_event_seq    bigint NOT NULL DEFAULT 0
);

CREATE INDEX run_leases_held_idx ON run_leases (expires_at) WHERE state = 'held';

-- +goose Down
DROP TABLE run_leases;
DROP TABLE frames;
DROP TABLE run_events;
DROP TABLE runs;
