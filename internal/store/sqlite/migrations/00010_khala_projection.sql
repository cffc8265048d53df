-- Khala projection: sync documents, per-topic replay journal with gap-free
-- watermarks, projection checkpoints, drift incidents and replay results.
-- The PostgreSQL driver mirrors this file; keep the two in step.

-- +goose Up

-- Next watermark per topic. Allocated in the transaction that appends the
-- stream row, so a rolled back write leaves no gap.
CREATE TABLE khala_topic_watermarks (
    topic          TEXT    NOT NULL PRIMARY KEY CHECK (topic <> ''),
    last_watermark INTEGER NOT NULL DEFAULT 0 CHECK (last_watermark >= 0)
);

-- Current read model per (topic, doc_key).
CREATE TABLE khala_documents (
    topic              TEXT    NOT NULL CHECK (topic <> ''),
    doc_key            TEXT    NOT NULL CHECK (doc_key <> ''),
    owner_sub          TEXT    NOT NULL,
    projection_version TEXT    NOT NULL CHECK (projection_version <> ''),
    runtime_source_seq INTEGER NOT NULL CHECK (runtime_source_seq >= 0),
    summary_hash       TEXT    NOT NULL,
    payload            TEXT    NOT NULL,
    updated_at         TEXT    NOT NULL,
    PRIMARY KEY (topic, doc_key)
);

CREATE INDEX khala_documents_owner_idx ON khala_documents (owner_sub, topic);

-- Replay journal. doc_version = runtime_source_seq of the document written.
CREATE TABLE khala_stream_events (
    topic        TEXT    NOT NULL,
    watermark    INTEGER NOT NULL CHECK (watermark > 0),
    doc_key      TEXT    NOT NULL,
    owner_sub    TEXT    NOT NULL,
    doc_version  INTEGER NOT NULL,
    payload      TEXT    NOT NULL,
    payload_hash TEXT    NOT NULL,
    created_at   TEXT    NOT NULL,
    PRIMARY KEY (topic, watermark)
);

-- Retention prunes by age.
CREATE INDEX khala_stream_events_created_at_idx ON khala_stream_events (created_at);

CREATE TABLE khala_projection_checkpoints (
    projection         TEXT    NOT NULL CHECK (projection IN ('run', 'codex_worker')),
    entity_id          TEXT    NOT NULL CHECK (entity_id <> ''),
    doc_key            TEXT    NOT NULL,
    last_seq           INTEGER NOT NULL CHECK (last_seq >= 0),
    summary_hash       TEXT    NOT NULL,
    projection_version TEXT    NOT NULL,
    updated_at         TEXT    NOT NULL,
    PRIMARY KEY (projection, entity_id)
);

-- The parity auditor samples the most recently updated checkpoints.
CREATE INDEX khala_projection_checkpoints_updated_at_idx ON khala_projection_checkpoints (projection, updated_at);

-- counted = 1 when the recording process already turned the row into its
-- metric; serving processes claim the others (operator commands) once.
CREATE TABLE khala_drift_incidents (
    id           INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    projection   TEXT    NOT NULL,
    entity_id    TEXT    NOT NULL,
    reason_class TEXT    NOT NULL CHECK (reason_class <> ''),
    detail       TEXT    NOT NULL DEFAULT '{}',
    origin       TEXT    NOT NULL DEFAULT '',
    counted      INTEGER NOT NULL DEFAULT 0 CHECK (counted IN (0, 1)),
    created_at   TEXT    NOT NULL
);

CREATE INDEX khala_drift_incidents_uncounted_idx ON khala_drift_incidents (id) WHERE counted = 0;
CREATE INDEX khala_drift_incidents_reason_idx ON khala_drift_incidents (reason_class, id);

CREATE TABLE khala_replays (
    id          INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    scope       TEXT    NOT NULL,
    entity_id   TEXT    NOT NULL,
    result      TEXT    NOT NULL CHECK (result IN ('ok', 'error')),
    error       TEXT    NOT NULL DEFAULT '',
    duration_us INTEGER NOT NULL DEFAULT 0,
    origin      TEXT    NOT NULL DEFAULT '',
    counted     INTEGER NOT NULL DEFAULT 0 CHECK (counted IN (0, 1)),
    created_at  TEXT    NOT NULL
);

CREATE INDEX khala_replays_uncounted_idx ON khala_replays (id) WHERE counted = 0;

-- The projector scans recently updated runs (runs_active_idx only covers
-- live ones; a run that just finished still needs its final summary).
CREATE INDEX runs_updated_at_idx ON runs (updated_at);

-- +goose Down

DROP INDEX runs_updated_at_idx;
DROP TABLE khala_replays;
DROP TABLE khala_drift_incidents;
DROP TABLE khala_projection_checkpoints;
DROP TABLE khala_stream_events;
DROP TABLE khala_documents;
DROP TABLE khala_topic_watermarks;
