-- Sync delivery: retention floors of the replay journal and an index for
-- owner-filtered reads. The PostgreSQL driver mirrors this file; keep the
-- two in step.

-- +goose Up

-- Highest pruned watermark per topic. Kept apart from khala_topic_watermarks
-- so that retention never contends with projection writers for that row.
-- A topic pruned to empty still remembers its floor, so a stale cursor is
-- recognised even when no row is left to compare it with.
CREATE TABLE khala_stream_floors (
    topic           TEXT    NOT NULL PRIMARY KEY CHECK (topic <> ''),
    floor_watermark INTEGER NOT NULL DEFAULT 0 CHECK (floor_watermark >= 0),
    updated_at      TEXT    NOT NULL
);

-- A subscriber reads only its own rows; without this index it would scan
-- every other owner's rows of the topic.
CREATE INDEX khala_stream_events_owner_idx ON khala_stream_events (topic, owner_sub, watermark);

-- +goose Down

DROP INDEX khala_stream_events_owner_idx;
DROP TABLE khala_stream_floors;
