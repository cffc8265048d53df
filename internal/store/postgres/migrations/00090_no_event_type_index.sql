-- run_events_type_idx served only "the latest event of a type in a run"
-- (FindEventByType: a cancel request while canceling, run.finished on an
-- idempotent repeat), which the primary key answers by reading the run's
-- events backwards from its end. It cost every appended event a third index
-- entry. CONCURRENTLY: replicas of the previous version keep appending
-- while it goes.

-- +goose NO TRANSACTION
-- +goose Up
DROP INDEX CONCURRENTLY IF EXISTS run_events_type_idx;

-- +goose Down
CREATE INDEX CONCURRENTLY IF NOT EXISTS run_events_type_idx ON run_events (run_id, event_type, seq);
