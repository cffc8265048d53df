-- The one-round-trip append. The driver remembers the head (seq, hash,
-- status) of runs it wrote last, computes the next event and its hash, and
-- calls this function once instead of a transaction of six statements. The
-- function applies the append only when the run still has the head the
-- driver remembered (nobody else appended since) and, for a fenced write,
-- the fence still holds; otherwise it changes nothing and the driver takes
-- the full transactional path, which decides every error. So this function
-- never decides an outcome the full path would decide differently.
--
-- Returns the event's created_at, or NULL when the remembered head is
-- stale. A lost fence raises SQLSTATE OA001 so that the run update rolls
-- back; a seen idempotency key raises unique_violation; both send the
-- driver to the full path. Lock order (runs row, then lease row) is that
-- of the full path. PostgreSQL only: SQLite runs in-process, where a
-- statement costs no round trip.

-- +goose Up
-- +goose StatementBegin
CREATE FUNCTION oa_append_fast(
    p_run_id text, p_seq bigint, p_prev_hash text, p_prev_status text,
    p_event_type text, p_payload json, p_hash text, p_key text,
    p_traceparent text, p_tracestate text, p_request_id text,
    p_status text, p_terminal boolean, p_reason_class text, p_reason text,
    p_processed_frame_id bigint,
    p_fenced boolean, p_owner text, p_generation bigint,
    p_channel text, p_notice text
) RETURNS timestamptz
LANGUAGE plpgsql AS $$
DECLARE
    v_created timestamptz;
BEGIN
    UPDATE runs SET
        latest_seq = p_seq,
        head_hash = p_hash,
        status = p_status,
        terminal_reason_class = CASE WHEN p_terminal THEN p_reason_class ELSE terminal_reason_class END,
        terminal_reason       = CASE WHEN p_terminal THEN p_reason ELSE terminal_reason END,
        terminal_at           = CASE WHEN p_terminal THEN now() ELSE terminal_at END,
        last_processed_frame_id = GREATEST(last_processed_frame_id, p_processed_frame_id),
        updated_at = now()
    WHERE run_id = p_run_id AND latest_seq = p_seq - 1 AND head_hash = p_prev_hash AND status = p_prev_status;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF p_fenced THEN
        -- clock_timestamp(): now() is the start of the statement, which
        -- may have waited for the run's row lock.
        UPDATE run_leases SET last_progress_seq = p_seq, heartbeat_at = now()
        WHERE run_id = p_run_id AND state = 'held' AND owner = p_owner AND generation = p_generation
          AND expires_at > clock_timestamp();
        IF NOT FOUND THEN
            RAISE EXCEPTION 'fence % / % does not hold the lease of run %', p_owner, p_generation, p_run_id
                USING ERRCODE = 'OA001';
        END IF;
    END IF;
    IF p_terminal THEN
        -- A finished run needs no executor (as in the full path).
        UPDATE run_leases SET state = 'released', expires_at = clock_timestamp()
        WHERE run_id = p_run_id AND state = 'held';
    END IF;
    INSERT INTO run_events (run_id, seq, event_type, payload, prev_hash, event_hash,
        idempotency_key, traceparent, tracestate, request_id)
    VALUES (p_run_id, p_seq, p_event_type, p_payload, p_prev_hash, p_hash,
        NULLIF(p_key, ''), p_traceparent, p_tracestate, p_request_id)
    RETURNING created_at INTO v_created;
    PERFORM pg_notify(p_channel, p_notice);
    RETURN v_created;
END
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION oa_append_fast;
