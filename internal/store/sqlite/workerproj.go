package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/oaruntime/oaruntime/internal/runs"
	"github.com/oaruntime/oaruntime/internal/store"
)

var _ store.WorkerProjectionStore = (*Store)(nil)

// WorkerProjectionCandidates implements store.WorkerProjectionStore.
func (s *Store) WorkerProjectionCandidates(ctx context.Context, q store.CandidateQuery) ([]store.WorkerProjectionCandidate, error) {
	if q.Limit <= 0 {
		q.Limit = 100
	}
	after := ""
	if !q.AfterUpdatedAt.IsZero() {
		after = formatTS(q.AfterUpdatedAt)
	}
	rows, err := s.reader.QueryContext(ctx, `SELECT w.worker_id, w.latest_seq, c.last_seq, COALESCE(e.last_seq, 0), w.updated_at
		FROM codex_workers w
		LEFT JOIN khala_projection_checkpoints c
			ON c.projection = 'codex_worker' AND c.entity_id = w.worker_id
		LEFT JOIN khala_projection_checkpoints e
			ON e.projection = 'codex_worker' AND e.entity_id = ? || w.worker_id
		WHERE (w.updated_at > ? OR (w.updated_at = ? AND w.worker_id > ?))
			AND (c.entity_id IS NULL OR c.last_seq <> w.latest_seq OR c.projection_version <> ?
				OR COALESCE(e.last_seq, 0) <> w.latest_seq)
		ORDER BY w.updated_at, w.worker_id LIMIT ?`,
		store.WorkerEventsCursorPrefix, after, after, q.AfterRunID, q.Version, q.Limit)
	if err != nil {
		return nil, fmt.Errorf("sqlite: worker projection candidates: %w", err)
	}
	defer rows.Close()
	var out []store.WorkerProjectionCandidate
	for rows.Next() {
		var (
			c  store.WorkerProjectionCandidate
			cp sql.NullInt64
			ts string
		)
		if err := rows.Scan(&c.EntityID, &c.LatestSeq, &cp, &c.EventsSeq, &ts); err != nil {
			return nil, fmt.Errorf("sqlite: worker projection candidates: %w", err)
		}
		c.HasCheckpoint, c.CheckpointSeq = cp.Valid, cp.Int64
		if c.UpdatedAt, err = parseTS(ts); err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: worker projection candidates: %w", err)
	}
	return out, nil
}

// WriteWorkerEvents implements store.WorkerProjectionStore. The single
// writer connection serializes it with every other write.
func (s *Store) WriteWorkerEvents(ctx context.Context, in store.WorkerEventsWriteInput) (store.WorkerEventsWriteResult, error) {
	var res store.WorkerEventsWriteResult
	if err := in.Validate(); err != nil {
		return res, fmt.Errorf("sqlite: write worker events: %w", err)
	}
	docs := make([]string, len(in.Events))
	for i, e := range in.Events {
		c, err := runs.CanonicalizeRaw(e.Doc)
		if err != nil {
			return res, fmt.Errorf("sqlite: write worker events of %s: events[%d].doc: %w", in.WorkerID, i, err)
		}
		docs[i] = string(c)
	}
	cursorID := store.WorkerEventsCursorID(in.WorkerID)
	err := s.write(ctx, func(tx *sql.Tx, _ func(store.Notice)) error {
		res = store.WorkerEventsWriteResult{}
		if !in.Force {
			var cur int64
			err := tx.QueryRowContext(ctx, `SELECT last_seq FROM khala_projection_checkpoints
				WHERE projection = 'codex_worker' AND entity_id = ?`, cursorID).Scan(&cur)
			if err != nil && !errors.Is(err, sql.ErrNoRows) {
				return err
			}
			if cur != in.ExpectSeq {
				return fmt.Errorf("event cursor is at %d, writer expected %d: %w", cur, in.ExpectSeq, store.ErrConflict)
			}
		}
		ts := formatTS(s.now())
		for i, e := range in.Events {
			key := store.WorkerEventDocKey(in.WorkerID, e.Seq)
			r, err := tx.ExecContext(ctx, `INSERT INTO khala_documents
				(topic, doc_key, owner_sub, projection_version, runtime_source_seq, summary_hash, payload, updated_at)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (topic, doc_key) DO NOTHING`,
				store.TopicCodexWorkerEvents, key, in.OwnerSub, in.Version, e.Seq, e.Hash, docs[i], ts)
			if err != nil {
				return fmt.Errorf("insert document %s: %w", key, err)
			}
			if n, err := r.RowsAffected(); err != nil || n == 0 {
				if err != nil {
					return fmt.Errorf("insert document %s: %w", key, err)
				}
				continue // already in the stream: never twice
			}
			var wm int64
			if err := tx.QueryRowContext(ctx, `INSERT INTO khala_topic_watermarks (topic, last_watermark) VALUES (?, 1)
				ON CONFLICT (topic) DO UPDATE SET last_watermark = last_watermark + 1
				RETURNING last_watermark`, store.TopicCodexWorkerEvents).Scan(&wm); err != nil {
				return fmt.Errorf("allocate watermark: %w", err)
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO khala_stream_events
				(topic, watermark, doc_key, owner_sub, doc_version, payload, payload_hash, created_at)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
				store.TopicCodexWorkerEvents, wm, key, in.OwnerSub, e.Seq, docs[i], runs.PayloadHash([]byte(docs[i])), ts); err != nil {
				return fmt.Errorf("append stream row: %w", err)
			}
			res.Appended++
			res.LastWatermark = wm
		}
		last := in.Events[len(in.Events)-1]
		if _, err := tx.ExecContext(ctx, `INSERT INTO khala_projection_checkpoints
			(projection, entity_id, doc_key, last_seq, summary_hash, projection_version, updated_at)
			VALUES ('codex_worker', ?, ?, ?, ?, ?, ?)
			ON CONFLICT (projection, entity_id) DO UPDATE SET doc_key = excluded.doc_key,
				last_seq = excluded.last_seq, summary_hash = excluded.summary_hash,
				projection_version = excluded.projection_version, updated_at = excluded.updated_at`,
			cursorID, store.WorkerEventDocKey(in.WorkerID, last.Seq), last.Seq, last.Hash, in.Version, ts); err != nil {
			return fmt.Errorf("upsert event cursor: %w", err)
		}
		return nil
	})
	if err != nil {
		return store.WorkerEventsWriteResult{}, fmt.Errorf("sqlite: write worker events of %s: %w", in.WorkerID, err)
	}
	return res, nil
}
