-- Sync delivery: retention floors of the replay journal and an index for
-- owner-filtered reads. Mirrors the SQLite driver's 00040 migration; keep
-- the two in step.

-- +goose Up

-- Highest pruned watermark per topic. Kept apart from khala_topic_watermarks
-- so that retention never waits on the row lock projection writers hold.
-- A topic pruned to empty still remembers its floor, so a stale cursor is
-- recognised even when no row is left to compare it with.
CREATE TABLE khala_stream_floors (
    topic           text        PRIMARY KEY CHECK (topic <> ''),
    floor_watermark bigint      NOT NULL DEFAULT 0 CHECK (floor_watermark >= 0),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- A subscriber reads only its own rows; without this index it would scan
-- every other owner's rows of the topic.
CREATE INDEX khala_stream_events_owner_idx ON khala_stream_events (topic, owner_sub, watermark);

-- +goose Down

DROP INDEX khala_stream_events_owner_idx;
DROP TABLE khala_stream_floors;
