-- run_events loses its foreign key to runs. The key checked every event
-- (one lookup and row lock of runs per inserted row, run as a trigger after
-- the statement): about an eighth of an append's cost on a busy server. It
-- guarded nothing the write paths do not already guarantee: every insert
-- into run_events (AppendEvent's transaction, oa_append_group, a reclaim)
-- first locks the run's row and checks its head, so an event never exists
-- without its run, and runs are never deleted (retention prunes events,
-- not runs), so ON DELETE CASCADE never fired. An operator deleting a run by
-- hand now deletes its events too: DELETE FROM run_events WHERE run_id = ...
--
-- SQLite keeps its key (00110 there is empty): its one writer makes the
-- check cheap.

-- +goose Up
ALTER TABLE run_events DROP CONSTRAINT IF EXISTS run_events_run_id_fkey;

-- +goose Down
ALTER TABLE run_events ADD CONSTRAINT run_events_run_id_fkey
    FOREIGN KEY (run_id) REFERENCES runs (run_id) ON DELETE CASCADE NOT VALID;
ALTER TABLE run_events VALIDATE CONSTRAINT run_events_run_id_fkey;
