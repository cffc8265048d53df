-- run_events_event_type_idx served only "the latest event of a type in a
-- run" (FindEventByType), which the primary key answers by reading the
-- run's events backwards from its end; it cost every appended event a third
-- index entry.

-- +goose Up
DROP INDEX IF EXISTS run_events_event_type_idx;

-- +goose Down
CREATE INDEX IF NOT EXISTS run_events_event_type_idx ON run_events (run_id, event_type, seq);
