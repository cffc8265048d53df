-- Fewer round trips on the hot paths. PostgreSQL only: SQLite runs
-- in-process, where a statement costs no round trip; its 00060 is empty and
-- keeps the schema versions of the two drivers in step.
--
-- oa_append_fast: the driver remembers the head (seq, hash, status) of runs
-- it wrote last, computes the next event and its hash, and calls this
-- function once instead of a transaction of six statements. The function
-- applies the append only when the run still has the head the driver
-- remembered (nobody else appended since) and, for a fenced write, the
-- fence still holds; otherwise it changes nothing and the driver takes the
-- full transactional path, which decides every error. So this function
-- never decides an outcome the full path would decide differently.
-- Returns the event's created_at, or NULL when the remembered head is
-- stale. A lost fence raises SQLSTATE OA001 so that the run update rolls
-- back; a seen idempotency key raises unique_violation; both send the
-- driver to the full path. Lock order (runs row, then lease row) is that
-- of the full path. The driver sends the notice after the commit (see
-- notifier.go), not from here.
--
-- oa_write_projection: one projection write (checkpoint precondition,
-- watermark, document, stream row, checkpoint) in one call instead of a
-- transaction of seven statements. A failed precondition raises SQLSTATE
-- OA002, which the driver reports as store.ErrConflict.

-- +goose Up
-- +goose StatementBegin
CREATE FUNCTION oa_append_fast(
    p_run_id text, p_seq bigint, p_prev_hash text, p_prev_status text,
    p_event_type text, p_payload json, p_hash text, p_key text,
    p_traceparent text, p_tracestate text, p_request_id text,
    p_status text, p_terminal boolean, p_reason_class text, p_reason text,
    p_processed_frame_id bigint,
    p_fenced boolean, p_owner text, p_generation bigint
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
    RETURN v_created;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE FUNCTION oa_write_projection(
    p_projection text, p_entity_id text, p_topic text, p_doc_key text, p_owner text,
    p_version text, p_source_seq bigint, p_hash text, p_doc json, p_payload_hash text,
    p_force boolean, p_expect_seq bigint
) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_cur bigint;
    v_wm  bigint;
    v_n   integer;
BEGIN
    -- The checkpoint row is locked before the topic's watermark row by
    -- every write, forced or not (and batches lock all theirs first): one
    -- lock order, so writers never deadlock.
    SELECT last_seq INTO v_cur FROM khala_projection_checkpoints
    WHERE projection = p_projection AND entity_id = p_entity_id FOR UPDATE;
    IF NOT FOUND THEN
        v_cur := -1;
    END IF;
    IF NOT p_force AND v_cur <> p_expect_seq THEN
        RAISE EXCEPTION 'checkpoint is at %, writer expected %', v_cur, p_expect_seq USING ERRCODE = 'OA002';
    END IF;
    INSERT INTO khala_topic_watermarks (topic, last_watermark) VALUES (p_topic, 1)
    ON CONFLICT (topic) DO UPDATE SET last_watermark = khala_topic_watermarks.last_watermark + 1
    RETURNING last_watermark INTO v_wm;
    INSERT INTO khala_documents
        (topic, doc_key, owner_sub, projection_version, runtime_source_seq, summary_hash, payload, updated_at)
    VALUES (p_topic, p_doc_key, p_owner, p_version, p_source_seq, p_hash, p_doc, now())
    ON CONFLICT (topic, doc_key) DO UPDATE SET owner_sub = excluded.owner_sub,
        projection_version = excluded.projection_version, runtime_source_seq = excluded.runtime_source_seq,
        summary_hash = excluded.summary_hash, payload = excluded.payload, updated_at = excluded.updated_at;
    INSERT INTO khala_stream_events (topic, watermark, doc_key, owner_sub, doc_version, payload, payload_hash)
    VALUES (p_topic, v_wm, p_doc_key, p_owner, p_source_seq, p_doc, p_payload_hash);
    -- The WHERE catches a checkpoint inserted concurrently after the "no
    -- checkpoint" read (the row lock above cannot cover a missing row).
    INSERT INTO khala_projection_checkpoints
        (projection, entity_id, doc_key, last_seq, summary_hash, projection_version, updated_at)
    VALUES (p_projection, p_entity_id, p_doc_key, p_source_seq, p_hash, p_version, now())
    ON CONFLICT (projection, entity_id) DO UPDATE SET doc_key = excluded.doc_key,
        last_seq = excluded.last_seq, summary_hash = excluded.summary_hash,
        projection_version = excluded.projection_version, updated_at = excluded.updated_at
    WHERE p_force OR khala_projection_checkpoints.last_seq = p_expect_seq;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    IF v_n = 0 THEN
        RAISE EXCEPTION 'checkpoint created concurrently' USING ERRCODE = 'OA002';
    END IF;
    RETURN v_wm;
END
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION oa_write_projection;
DROP FUNCTION oa_append_fast;
