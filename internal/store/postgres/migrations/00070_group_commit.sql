-- Group commit (see batch.go in the driver). Many executors append to many
-- runs at once and many requests create runs and frames, each a transaction
-- of its own: under load PostgreSQL spends most of its time on per-statement
-- and per-commit work, not on rows. These functions apply many such writes in
-- one call and one commit. (New runs need no function: one INSERT ... SELECT
-- FROM unnest does.)
--
-- oa_append_group applies the fast appends (see oa_append_fast in 00060) of
-- many runs.
--
-- Input: one row per run (g_*: the head the driver remembered, the head
-- after the run's events, and the run-level effects of those events) and one
-- row per event (e_*). A run's events are applied all or none, and only when
-- the run still has the remembered head, no event reuses a seen idempotency
-- key, and a fenced write's fence still holds; every check happens before any
-- write, so a run that fails one is left untouched while the others apply.
-- Returns the applied events (run, seq, created_at); a run without rows was
-- not applied and the driver sends it to the full transactional path, which
-- decides every error and replay.
--
-- Lock order: each run's row, then its lease row, as the full path does for
-- one run; runs in the order the driver gives them, which is run_id order,
-- so that two calls never deadlock on each other. The driver puts at most
-- one entry per run in a call.
--
-- oa_append_fast (00060) is no longer called by this version of the driver;
-- it stays for the replicas of the previous version during a rolling
-- update.

-- +goose Up
-- +goose StatementBegin
CREATE FUNCTION oa_append_group(
    g_run_id text[], g_prev_seq bigint[], g_prev_hash text[], g_prev_status text[],
    g_seq bigint[], g_hash text[], g_status text[],
    g_terminal boolean[], g_reason_class text[], g_reason text[], g_processed_frame_id bigint[],
    g_fenced boolean[], g_owner text[], g_generation bigint[],
    g_first_event integer[], g_events integer[], g_keyed boolean[],
    e_run_id text[], e_seq bigint[], e_event_type text[], e_payload text[], e_prev_hash text[], e_hash text[],
    e_key text[], e_traceparent text[], e_tracestate text[], e_request_id text[]
) RETURNS TABLE (o_run_id text, o_seq bigint, o_created_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    v_ok  text[] := '{}';
    v_run text;
BEGIN
    -- One run at a time, each statement a primary-key lookup: plans that
    -- stay right whatever the statistics say (a set-based join over the
    -- input chose sequential scans of runs on young tables). The driver
    -- orders the runs by run_id: the lock order between calls.
    FOR i IN 1 .. coalesce(array_length(g_run_id, 1), 0) LOOP
        v_run := g_run_id[i];
        -- The run still has the remembered head; its row lock serializes
        -- every writer of the run until the commit.
        PERFORM 1 FROM runs
        WHERE run_id = v_run AND latest_seq = g_prev_seq[i] AND head_hash = g_prev_hash[i] AND status = g_prev_status[i]
        FOR NO KEY UPDATE;
        CONTINUE WHEN NOT FOUND;
        -- No event reuses a seen idempotency key (under the row lock nobody
        -- else can add one).
        IF g_keyed[i] AND EXISTS (SELECT 1 FROM run_events WHERE run_id = v_run
            AND idempotency_key = ANY (e_key[g_first_event[i] : g_first_event[i] + g_events[i] - 1])) THEN
            CONTINUE;
        END IF;
        IF g_fenced[i] THEN
            -- The fence holds; the update locks the lease row, so the lease
            -- cannot be taken over before the commit. A terminal event also
            -- releases the lease.
            UPDATE run_leases SET last_progress_seq = g_seq[i], heartbeat_at = now(),
                state      = CASE WHEN g_terminal[i] THEN 'released' ELSE state END,
                expires_at = CASE WHEN g_terminal[i] THEN clock_timestamp() ELSE expires_at END
            WHERE run_id = v_run AND state = 'held' AND owner = g_owner[i] AND generation = g_generation[i]
              AND expires_at > clock_timestamp();
            CONTINUE WHEN NOT FOUND;
        ELSIF g_terminal[i] THEN
            -- A finished run needs no executor.
            UPDATE run_leases SET state = 'released', expires_at = clock_timestamp()
            WHERE run_id = v_run AND state = 'held';
        END IF;
        -- Every check passed; nothing below can refuse the run.
        UPDATE runs SET
            latest_seq = g_seq[i],
            head_hash = g_hash[i],
            status = g_status[i],
            terminal_reason_class = CASE WHEN g_terminal[i] THEN g_reason_class[i] ELSE terminal_reason_class END,
            terminal_reason       = CASE WHEN g_terminal[i] THEN g_reason[i] ELSE terminal_reason END,
            terminal_at           = CASE WHEN g_terminal[i] THEN now() ELSE terminal_at END,
            last_processed_frame_id = GREATEST(last_processed_frame_id, g_processed_frame_id[i]),
            updated_at = now()
        WHERE run_id = v_run;
        v_ok := v_ok || v_run;
    END LOOP;

    RETURN QUERY WITH ins AS (
        INSERT INTO run_events (run_id, seq, event_type, payload, prev_hash, event_hash,
            idempotency_key, traceparent, tracestate, request_id)
        SELECT e.run_id, e.seq, e.event_type, e.payload::json, e.prev_hash, e.hash,
            NULLIF(e.key, ''), e.traceparent, e.tracestate, e.request_id
        FROM unnest(e_run_id, e_seq, e_event_type, e_payload, e_prev_hash, e_hash,
                    e_key, e_traceparent, e_tracestate, e_request_id)
            AS e(run_id, seq, event_type, payload, prev_hash, hash, key, traceparent, tracestate, request_id)
        WHERE e.run_id = ANY (v_ok)
        RETURNING run_events.run_id, run_events.seq, run_events.created_at)
    SELECT * FROM ins;
END
$$;
-- +goose StatementEnd

-- oa_insert_frames inserts new frames of many runs, in the order given
-- (the driver groups them by run, in run_id order). Each run's row is locked
-- before its frames draw their ids, as InsertFrame does, so that the frames of
-- a run commit in id order. A frame of a missing run, or whose frame_id is
-- taken, is skipped: the driver sends it to InsertFrame's full path, which
-- tells not-found, replay and conflict apart. Returns the inserted frames.
-- +goose StatementBegin
CREATE FUNCTION oa_insert_frames(
    f_run_id text[], f_frame_id text[], f_type text[], f_payload text[], f_hash text[],
    f_traceparent text[], f_tracestate text[], f_request_id text[]
) RETURNS SETOF frames
LANGUAGE plpgsql AS $$
DECLARE
    v_run   text;
    v_found boolean := false;
BEGIN
    FOR i IN 1 .. coalesce(array_length(f_run_id, 1), 0) LOOP
        IF v_run IS DISTINCT FROM f_run_id[i] THEN
            v_run := f_run_id[i];
            PERFORM 1 FROM runs WHERE run_id = v_run FOR NO KEY UPDATE;
            v_found := FOUND;
        END IF;
        CONTINUE WHEN NOT v_found;
        RETURN QUERY WITH ins AS (
            INSERT INTO frames (run_id, frame_id, frame_type, payload, payload_hash, traceparent, tracestate, request_id)
            VALUES (v_run, f_frame_id[i], f_type[i], f_payload[i]::json, f_hash[i],
                    f_traceparent[i], f_tracestate[i], f_request_id[i])
            ON CONFLICT (run_id, frame_id) DO NOTHING
            RETURNING frames.*)
        SELECT * FROM ins;
    END LOOP;
END
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION oa_insert_frames;
DROP FUNCTION oa_append_group;
