-- oa_append_group (00070) ran three statements per run (lock the head,
-- update the lease, update the run): with ten runs a call, thirty statement
-- start-ups, plan-cache checks and snapshots, most of the function's cost on
-- a busy server. This version makes the same decisions in a fixed number of
-- set-based statements whatever the number of runs. Same signature, same
-- result, same all-or-none per run, same lock order (every run's row first,
-- in the order given, which is run_id order; then their lease rows in that
-- order): the driver is unchanged.
--
-- The planner settings keep every statement on primary-key lookups: on a
-- young table (or one whose statistics lag) a join over the input may
-- otherwise choose a sequential scan, and the cached plan would keep it.
-- For the same reason the lease updates test state as `l.state || '' =
-- 'held'`: written plainly, the condition matches run_leases_held_idx (WHERE
-- state = 'held'), and with young statistics the planner scanned every held
-- lease of the table for each call instead of looking up its few rows.

-- +goose Up
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION oa_append_group(
    g_run_id text[], g_prev_seq bigint[], g_prev_hash text[], g_prev_status text[],
    g_seq bigint[], g_hash text[], g_status text[],
    g_terminal boolean[], g_reason_class text[], g_reason text[], g_processed_frame_id bigint[],
    g_fenced boolean[], g_owner text[], g_generation bigint[],
    g_first_event integer[], g_events integer[], g_keyed boolean[],
    e_run_id text[], e_seq bigint[], e_event_type text[], e_payload text[], e_prev_hash text[], e_hash text[],
    e_key text[], e_traceparent text[], e_tracestate text[], e_request_id text[]
) RETURNS TABLE (o_run_id text, o_seq bigint, o_created_at timestamptz)
LANGUAGE plpgsql
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_ok int[];  -- positions (in g_*) of the runs still applying
    v_lost int[]; -- fenced runs whose fence no longer holds
BEGIN
    -- The runs that still have the remembered head, locked in input order
    -- (the lateral subquery runs once per input row, in order); their row
    -- locks serialize every writer of those runs until the commit. Then,
    -- under those locks, drop the runs whose events reuse a seen
    -- idempotency key (nobody else can add one now): one index lookup per
    -- key, where `= ANY (keys)` read every keyed event of the run.
    WITH locked AS MATERIALIZED (
        SELECT g.i, g.run_id, g.keyed, g.first_event, g.events
        FROM unnest(g_run_id, g_prev_seq, g_prev_hash, g_prev_status, g_keyed, g_first_event, g_events)
                WITH ORDINALITY AS g(run_id, prev_seq, prev_hash, prev_status, keyed, first_event, events, i)
            CROSS JOIN LATERAL (
                SELECT 1 FROM runs r
                WHERE r.run_id = g.run_id AND r.latest_seq = g.prev_seq AND r.head_hash = g.prev_hash
                  AND r.status = g.prev_status
                FOR NO KEY UPDATE) AS head
    )
    SELECT coalesce(array_agg(l.i::int ORDER BY l.i), '{}') INTO v_ok
    FROM locked l
    WHERE NOT (l.keyed AND EXISTS (
        SELECT 1 FROM unnest(e_key[l.first_event : l.first_event + l.events - 1]) AS k(key)
            JOIN run_events e ON e.run_id = l.run_id AND e.idempotency_key = k.key));

    IF cardinality(v_ok) = 0 THEN
        RETURN;
    END IF;

    -- The fences hold: one update of the fenced runs' lease rows, which
    -- locks them so that no lease is taken over before the commit. A
    -- terminal event also releases the lease. A run whose row is not
    -- updated lost its fence and is left out below (its lease untouched).
    WITH g AS (
        SELECT * FROM unnest(g_run_id, g_seq, g_terminal, g_owner, g_generation)
            WITH ORDINALITY AS g(run_id, seq, terminal, owner, generation, i)
        WHERE g.i = ANY (v_ok) AND g_fenced[g.i]
    ), upd AS (
        UPDATE run_leases l SET last_progress_seq = g.seq, heartbeat_at = now(),
            state      = CASE WHEN g.terminal THEN 'released' ELSE l.state END,
            expires_at = CASE WHEN g.terminal THEN clock_timestamp() ELSE l.expires_at END
        FROM g
        WHERE l.run_id = g.run_id AND l.state || '' = 'held' AND l.owner = g.owner AND l.generation = g.generation
          AND l.expires_at > clock_timestamp()
        RETURNING g.i)
    SELECT coalesce(array_agg(g.i::int), '{}') INTO v_lost
    FROM g WHERE g.i NOT IN (SELECT upd.i FROM upd);

    IF cardinality(v_lost) > 0 THEN
        SELECT coalesce(array_agg(i), '{}') INTO v_ok FROM unnest(v_ok) AS i WHERE i <> ALL (v_lost);
        IF cardinality(v_ok) = 0 THEN
            RETURN;
        END IF;
    END IF;

    -- A finished run needs no executor (unfenced writers: the lease, if
    -- any, is released).
    UPDATE run_leases l SET state = 'released', expires_at = clock_timestamp()
    FROM unnest(g_run_id) WITH ORDINALITY AS g(run_id, i)
    WHERE g.i = ANY (v_ok) AND NOT g_fenced[g.i] AND g_terminal[g.i]
      AND l.run_id = g.run_id AND l.state || '' = 'held';

    -- Every check passed; nothing below can refuse a run.
    UPDATE runs r SET
        latest_seq = g.seq,
        head_hash = g.hash,
        status = g.status,
        terminal_reason_class = CASE WHEN g.terminal THEN g.reason_class ELSE r.terminal_reason_class END,
        terminal_reason       = CASE WHEN g.terminal THEN g.reason ELSE r.terminal_reason END,
        terminal_at           = CASE WHEN g.terminal THEN now() ELSE r.terminal_at END,
        last_processed_frame_id = GREATEST(r.last_processed_frame_id, g.processed_frame_id),
        updated_at = now()
    FROM unnest(g_run_id, g_seq, g_hash, g_status, g_terminal, g_reason_class, g_reason, g_processed_frame_id)
        WITH ORDINALITY AS g(run_id, seq, hash, status, terminal, reason_class, reason, processed_frame_id, i)
    WHERE g.i = ANY (v_ok) AND r.run_id = g.run_id;

    RETURN QUERY WITH ins AS (
        INSERT INTO run_events (run_id, seq, event_type, payload, prev_hash, event_hash,
            idempotency_key, traceparent, tracestate, request_id)
        SELECT e.run_id, e.seq, e.event_type, e.payload::json, e.prev_hash, e.hash,
            NULLIF(e.key, ''), e.traceparent, e.tracestate, e.request_id
        FROM unnest(e_run_id, e_seq, e_event_type, e_payload, e_prev_hash, e_hash,
                    e_key, e_traceparent, e_tracestate, e_request_id)
            AS e(run_id, seq, event_type, payload, prev_hash, hash, key, traceparent, tracestate, request_id)
        WHERE e.run_id = ANY (ARRAY(SELECT g_run_id[i] FROM unnest(v_ok) AS i))
        RETURNING run_events.run_id, run_events.seq, run_events.created_at)
    SELECT * FROM ins;
END
$$;
-- +goose StatementEnd

-- +goose Down
-- The 00070 version, statement for statement.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION oa_append_group(
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
    FOR i IN 1 .. coalesce(array_length(g_run_id, 1), 0) LOOP
        v_run := g_run_id[i];
        PERFORM 1 FROM runs
        WHERE run_id = v_run AND latest_seq = g_prev_seq[i] AND head_hash = g_prev_hash[i] AND status = g_prev_status[i]
        FOR NO KEY UPDATE;
        CONTINUE WHEN NOT FOUND;
        IF g_keyed[i] AND EXISTS (SELECT 1 FROM run_events WHERE run_id = v_run
            AND idempotency_key = ANY (e_key[g_first_event[i] : g_first_event[i] + g_events[i] - 1])) THEN
            CONTINUE;
        END IF;
        IF g_fenced[i] THEN
            UPDATE run_leases SET last_progress_seq = g_seq[i], heartbeat_at = now(),
                state      = CASE WHEN g_terminal[i] THEN 'released' ELSE state END,
                expires_at = CASE WHEN g_terminal[i] THEN clock_timestamp() ELSE expires_at END
            WHERE run_id = v_run AND state = 'held' AND owner = g_owner[i] AND generation = g_generation[i]
              AND expires_at > clock_timestamp();
            CONTINUE WHEN NOT FOUND;
        ELSIF g_terminal[i] THEN
            UPDATE run_leases SET state = 'released', expires_at = clock_timestamp()
            WHERE run_id = v_run AND state = 'held';
        END IF;
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
