-- Khala projection: sync documents, per-topic replay journal with gap-free
-- watermarks, projection checkpoints, drift incidents and replay results.
-- Mirrors the SQLite driver's 00010 migration; keep the two in step.

-- +goose Up

-- Next watermark per topic. The row lock taken by the increment serializes
-- writers of one topic, and a rolled back write leaves no gap.
CREATE TABLE khala_topic_watermarks (
    topic          text   PRIMARY KEY CHECK (topic <> ''),
    last_watermark bigint NOT NULL DEFAULT 0 CHECK (last_watermark >= 0)
);

CREATE TABLE khala_documents (
    topic              text        NOT NULL CHECK (topic <> ''),
    doc_key            text        NOT NULL CHECK (doc_key <> ''),
    owner_sub          text        NOT NULL,
    projection_version text        NOT NULL CHECK (projection_version <> ''),
    runtime_source_seq bigint      NOT NULL CHECK (runtime_source_seq >= 0),
    summary_hash       text        NOT NULL,
    -- json (not jsonb) keeps the canonical text byte for byte.
    payload            json        NOT NULL,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, doc_key)
);

CREATE INDEX khala_documents_owner_idx ON khala_documents (owner_sub, topic);

CREATE TABLE khala_stream_events (
    topic        text        NOT NULL,
    watermark    bigint      NOT NULL CHECK (watermark > 0),
    doc_key      text        NOT NULL,
    owner_sub    text        NOT NULL,
    doc_version  bigint      NOT NULL,
    payload      json        NOT NULL,
    payload_hash text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, watermark)
);

CREATE INDEX khala_stream_events_created_at_idx ON khala_stream_events (created_at);

CREATE TABLE khala_projection_checkpoints (
    projection         text        NOT NULL CHECK (projection IN ('run', 'codex_worker')),
    entity_id          text        NOT NULL CHECK (entity_id <> ''),
    doc_key            text        NOT NULL,
    last_seq           bigint      NOT NULL CHECK (last_seq >= 0),
    summary_hash       text        NOT NULL,
    projection_version text        NOT NULL,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, entity_id)
);

CREATE INDEX khala_projection_checkpoints_updated_at_idx ON khala_projection_checkpoints (projection, updated_at);

-- counted = true when the recording process already turned the row into its
-- metric; serving replicas claim the others (operator commands) exactly once.
CREATE TABLE khala_drift_incidents (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    projection   text        NOT NULL,
    entity_id    text        NOT NULL,
    reason_class text        NOT NULL CHECK (reason_class <> ''),
    detail       json        NOT NULL DEFAULT '{}',
    origin       text        NOT NULL DEFAULT '',
    counted      boolean     NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX khala_drift_incidents_uncounted_idx ON khala_drift_incidents (id) WHERE NOT counted;
CREATE INDEX khala_drift_incidents_reason_idx ON khala_drift_incidents (reason_class, id);

CREATE TABLE khala_replays (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    scope       text        NOT NULL,
    entity_id   text        NOT NULL,
    result      text        NOT NULL CHECK (result IN ('ok', 'error')),
    error       text        NOT NULL DEFAULT '',
    duration_us bigint      NOT NULL DEFAULT 0,
    origin      text        NOT NULL DEFAULT '',
    counted     boolean     NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX khala_replays_uncounted_idx ON khala_replays (id) WHERE NOT counted;

-- The projector scans recently updated runs, finished ones included.
CREATE INDEX runs_updated_at_idx ON runs (updated_at);

-- +goose Down
DROP INDEX runs_updated_at_idx;
DROP TABLE khala_replays;
DROP TABLE khala_drift_incidents;
DROP TABLE khala_projection_checkpoints;
DROP TABLE khala_stream_events;
DROP TABLE khala_documents;
DROP TABLE khala_topic_watermarks;
