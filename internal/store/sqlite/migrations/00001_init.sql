-- Schema of the embedded SQLite store. The PostgreSQL driver mirrors it
-- (timestamptz for the *_at columns, boolean for released/reclaimed, bigserial
-- ids); keep the two in step.
--
-- Timestamps are TEXT in one fixed-width UTC layout with microseconds
-- ('2006-01-02T15:04:05.000000Z'), so they read plainly in the sqlite3 shell
-- and compare correctly as strings.
-- JSON documents are stored as canonical JSON text, byte for byte what the
-- hash chain and the idempotency checks were computed over.

-- +goose Up

CREATE TABLE runs (
    run_id                  TEXT    NOT NULL PRIMARY KEY CHECK (run_id <> ''),
    thread_id               TEXT    NOT NULL,
    owner_sub               TEXT    NOT NULL CHECK (owner_sub <> ''),
    status                  TEXT    NOT NULL DEFAULT 'created'
        CHECK (status IN ('created', 'running', 'canceling', 'succeeded', 'failed', 'canceled')),
    -- Tip of the hash chain. Kept on the run so that pruning old events never
    -- loses the hash the next append chains to.
    latest_seq              INTEGER NOT NULL DEFAULT 0,
    head_hash               TEXT    NOT NULL DEFAULT '',
    provider_json           TEXT,
    tools_json              TEXT,
    authorization_json      TEXT,
    output_schema_json      TEXT,
    metadata_json           TEXT,
    terminal_reason_class   TEXT    NOT NULL DEFAULT '',
    terminal_reason         TEXT    NOT NULL DEFAULT '',
    terminal_at             TEXT,
    -- frames.id of the last frame the executor finished.
    last_processed_frame_id INTEGER NOT NULL DEFAULT 0,
    -- Events with seq <= retention_floor_seq were pruned.
    retention_floor_seq     INTEGER NOT NULL DEFAULT 0,
    -- Consecutive janitor reclaims without executor progress.
    recovery_attempts       INTEGER NOT NULL DEFAULT 0,
    last_recovery_at        TEXT,
    created_at              TEXT    NOT NULL,
    updated_at              TEXT    NOT NULL
);

CREATE INDEX runs_thread_id_idx ON runs (thread_id);
-- ClaimRunnable and the janitor only look at live runs.
CREATE INDEX runs_active_idx ON runs (updated_at)
    WHERE status IN ('created', 'running', 'canceling');

-- Inputs to a run, stored unsanitized. id orders them and is the executor's
-- cursor (runs.last_processed_frame_id).
CREATE TABLE frames (
    id           INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    run_id       TEXT    NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    frame_id     TEXT    NOT NULL CHECK (frame_id <> ''),
    frame_type   TEXT    NOT NULL CHECK (frame_type <> ''),
    payload      TEXT    NOT NULL,
    payload_hash TEXT    NOT NULL, -- 'sha256:<hex>' of the canonical payload
    traceparent  TEXT    NOT NULL DEFAULT '',
    tracestate   TEXT    NOT NULL DEFAULT '',
    request_id   TEXT    NOT NULL DEFAULT '',
    created_at   TEXT    NOT NULL,
    UNIQUE (run_id, frame_id)
);

CREATE INDEX frames_run_id_id_idx ON frames (run_id, id);

-- The append-only, hash-chained event log. seq is gap-free per run;
-- event_hash = sha256(run_id|seq|event_type|sha256(payload)|prev_hash or 'root').
CREATE TABLE run_events (
    id              INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    run_id          TEXT    NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    seq             INTEGER NOT NULL CHECK (seq > 0),
    event_type      TEXT    NOT NULL CHECK (event_type <> ''),
    payload         TEXT    NOT NULL,
    prev_hash       TEXT    NOT NULL DEFAULT '', -- '' for seq 1
    event_hash      TEXT    NOT NULL,
    idempotency_key TEXT    NOT NULL DEFAULT '', -- '' = none
    traceparent     TEXT    NOT NULL DEFAULT '',
    tracestate      TEXT    NOT NULL DEFAULT '',
    request_id      TEXT    NOT NULL DEFAULT '',
    created_at      TEXT    NOT NULL,
    UNIQUE (run_id, seq)
);

CREATE UNIQUE INDEX run_events_idempotency_key_idx ON run_events (run_id, idempotency_key)
    WHERE idempotency_key <> '';
CREATE INDEX run_events_event_type_idx ON run_events (run_id, event_type, seq);

-- One execution lease per run. The row outlives release and reclaim so that
-- generation (the fencing token) only ever grows.
CREATE TABLE run_leases (
    run_id            TEXT    NOT NULL PRIMARY KEY REFERENCES runs (run_id) ON DELETE CASCADE,
    owner             TEXT    NOT NULL,
    generation        INTEGER NOT NULL CHECK (generation > 0),
    expires_at        TEXT    NOT NULL,
    heartbeat_at      TEXT    NOT NULL,
    -- 1 after the holder gave the lease up; the janitor ignores it.
    released          INTEGER NOT NULL DEFAULT 0 CHECK (released IN (0, 1)),
    -- 1 after the janitor reclaimed the expired lease; ClaimRunnable may
    -- hand it to a live executor (result 'stolen').
    reclaimed         INTEGER NOT NULL DEFAULT 0 CHECK (reclaimed IN (0, 1)),
    -- seq of the last event appended under a valid fence (executor progress).
    last_progress_seq INTEGER NOT NULL DEFAULT 0,
    -- seq of the run.executor_lost appended by the last reclaim; progress
    -- after it resets runs.recovery_attempts.
    lost_event_seq    INTEGER NOT NULL DEFAULT 0
);

-- The janitor's scan: held leases by expiry.
CREATE INDEX run_leases_held_expires_at_idx ON run_leases (expires_at)
    WHERE released = 0 AND reclaimed = 0;

-- +goose Down

DROP TABLE run_leases;
DROP TABLE run_events;
DROP TABLE frames;
DROP TABLE runs;
