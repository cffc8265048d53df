-- oa_write_projections: the projector's page of projection writes (see
-- oa_write_projection in 00060 for one) in a few set-based statements
-- instead of five statements per document. Arguments are parallel arrays
-- in the order the driver gives them: by topic, then entity. All or none:
-- a failed precondition raises OA002, any other failure (two writes of one
-- document in the batch, say) its own error, and the driver then writes
-- each document on its own, so that each gets the answer
-- oa_write_projection gives it. Returns the stream watermark of each write,
-- in input order.
--
-- Lock order as oa_write_projection: the checkpoint rows first (in
-- projection, entity order), then the topics' watermark rows (in topic
-- order).

-- +goose Up
-- +goose StatementBegin
CREATE FUNCTION oa_write_projections(
    p_projection text[], p_entity_id text[], p_topic text[], p_doc_key text[], p_owner text[],
    p_version text[], p_source_seq bigint[], p_hash text[], p_doc text[], p_payload_hash text[],
    p_force boolean[], p_expect_seq bigint[]
) RETURNS bigint[]
LANGUAGE plpgsql AS $$
DECLARE
    v_n   integer := coalesce(array_length(p_entity_id, 1), 0);
    v_bad integer;
    v_wms bigint[];
    v_got integer;
BEGIN
    IF v_n = 0 THEN
        RETURN '{}';
    END IF;
    -- Lock every checkpoint row (a primary-key lookup each, in key order)
    -- and check every precondition before any write.
    SELECT count(*) INTO v_bad
    FROM (SELECT * FROM unnest(p_projection, p_entity_id, p_force, p_expect_seq)
            AS i(projection, entity_id, force, expect_seq)
          ORDER BY projection, entity_id) i
    LEFT JOIN LATERAL (
        SELECT c.last_seq FROM khala_projection_checkpoints c
        WHERE c.projection = i.projection AND c.entity_id = i.entity_id FOR UPDATE) c ON true
    WHERE NOT i.force AND coalesce(c.last_seq, -1) <> i.expect_seq;
    IF v_bad > 0 THEN
        RAISE EXCEPTION '% of % checkpoints are not where their writers expected', v_bad, v_n USING ERRCODE = 'OA002';
    END IF;

    -- Each topic's watermark moves once by its number of writes; the
    -- writes of a topic take its new watermarks in input order.
    WITH w AS (
        SELECT topic, ord, row_number() OVER (PARTITION BY topic ORDER BY ord) AS rk,
               count(*) OVER (PARTITION BY topic) AS n
        FROM unnest(p_topic) WITH ORDINALITY AS u(topic, ord)),
    up AS (
        INSERT INTO khala_topic_watermarks (topic, last_watermark)
        SELECT topic, max(n) FROM w GROUP BY topic ORDER BY topic
        ON CONFLICT (topic) DO UPDATE SET last_watermark = khala_topic_watermarks.last_watermark + excluded.last_watermark
        RETURNING topic, last_watermark)
    SELECT array_agg(up.last_watermark - w.n + w.rk ORDER BY w.ord) INTO v_wms
    FROM w JOIN up USING (topic);

    INSERT INTO khala_documents
        (topic, doc_key, owner_sub, projection_version, runtime_source_seq, summary_hash, payload, updated_at)
    SELECT topic, doc_key, owner, version, source_seq, hash, doc::json, now()
    FROM unnest(p_topic, p_doc_key, p_owner, p_version, p_source_seq, p_hash, p_doc)
        AS d(topic, doc_key, owner, version, source_seq, hash, doc)
    ON CONFLICT (topic, doc_key) DO UPDATE SET owner_sub = excluded.owner_sub,
        projection_version = excluded.projection_version, runtime_source_seq = excluded.runtime_source_seq,
        summary_hash = excluded.summary_hash, payload = excluded.payload, updated_at = excluded.updated_at;

    INSERT INTO khala_stream_events (topic, watermark, doc_key, owner_sub, doc_version, payload, payload_hash)
    SELECT topic, wm, doc_key, owner, source_seq, doc::json, payload_hash
    FROM unnest(p_topic, v_wms, p_doc_key, p_owner, p_source_seq, p_doc, p_payload_hash)
        AS s(topic, wm, doc_key, owner, source_seq, doc, payload_hash);

    -- A checkpoint inserted concurrently after the "no checkpoint" check
    -- (the row locks above cannot cover a missing row) fails the insert
    -- with unique_violation: the driver then writes one by one.
    MERGE INTO khala_projection_checkpoints k
    USING unnest(p_projection, p_entity_id, p_doc_key, p_source_seq, p_hash, p_version, p_force, p_expect_seq)
        AS c(projection, entity_id, doc_key, source_seq, hash, version, force, expect_seq)
    ON k.projection = c.projection AND k.entity_id = c.entity_id
    WHEN MATCHED AND (c.force OR k.last_seq = c.expect_seq) THEN
        UPDATE SET doc_key = c.doc_key, last_seq = c.source_seq, summary_hash = c.hash,
            projection_version = c.version, updated_at = now()
    WHEN NOT MATCHED THEN
        INSERT (projection, entity_id, doc_key, last_seq, summary_hash, projection_version, updated_at)
        VALUES (c.projection, c.entity_id, c.doc_key, c.source_seq, c.hash, c.version, now());
    GET DIAGNOSTICS v_got = ROW_COUNT;
    IF v_got <> v_n THEN
        RAISE EXCEPTION 'a checkpoint moved under the batch' USING ERRCODE = 'OA002';
    END IF;
    RETURN v_wms;
END
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION oa_write_projections;
