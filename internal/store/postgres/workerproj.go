package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/oaruntime/oaruntime/internal/runs"
	"github.com/oaruntime/oaruntime/internal/store"
)

var _ store.WorkerProjectionStore = (*Store)(nil)

// WorkerProjectionCandidates implements store.WorkerProjectionStore. The
// checkpoint joins compare in the default collation (COLLATE "default" on
// the worker id, which is "C") so that the checkpoint primary key serves them.
func (s *Store) WorkerProjectionCandidates(ctx context.Context, q store.CandidateQuery) ([]store.WorkerProjectionCandidate, error) {
	if q.Limit <= 0 {
		q.Limit = 100
	}
	if !storable(q.AfterRunID) || !storable(q.Version) {
		return nil, errors.New("postgres: worker projection candidates: key contains NUL or invalid UTF-8")
	}
	var after *time.Time
	if !q.AfterUpdatedAt.IsZero() {
		t := q.AfterUpdatedAt.UTC()
		after = &t
	}
	rows, err := s.pool.Query(ctx, `SELECT w.worker_id, w.latest_seq, c.last_seq, COALESCE(e.last_seq, 0), w.updated_at
		FROM codex_workers w
		LEFT JOIN khala_projection_checkpoints c
			ON c.projection = 'codex_worker' AND c.entity_id = (w.worker_id COLLATE "default")
		LEFT JOIN khala_projection_checkpoints e
			ON e.projection = 'codex_worker' AND e.entity_id = ($5 || w.worker_id) COLLATE "default"
		WHERE ($1::timestamptz IS NULL OR w.updated_at > $1 OR (w.updated_at = $1 AND w.worker_id > $2))
			AND (c.entity_id IS NULL OR c.last_seq <> w.latest_seq OR c.projection_version <> $3
				OR COALESCE(e.last_seq, 0) <> w.latest_seq)
		ORDER BY w.updated_at, w.worker_id LIMIT $4`,
		after, q.AfterRunID, q.Version, q.Limit, store.WorkerEventsCursorPrefix)
	if err != nil {
		return nil, fmt.Errorf("postgres: worker projection candidates: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (store.WorkerProjectionCandidate, error) {
		var (
			c  store.WorkerProjectionCandidate
			cp *int64
		)
		err := row.Scan(&c.EntityID, &c.LatestSeq, &cp, &c.EventsSeq, &c.UpdatedAt)
		if cp != nil {
			c.HasCheckpoint, c.CheckpointSeq = true, *cp
		}
		c.UpdatedAt = c.UpdatedAt.UTC()
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("postgres: worker projection candidates: %w", err)
	}
	return out, nil
}

// WriteWorkerEvents implements store.WorkerProjectionStore. Locks come in
// the order every projection writer takes them: the cursor row, then (per
// inserted document) the topic's watermark row. Two writers of one worker
// that both found no cursor meet on the first document's key: the second
// waits, inserts nothing, and then fails the cursor precondition.
func (s *Store) WriteWorkerEvents(ctx context.Context, in store.WorkerEventsWriteInput) (store.WorkerEventsWriteResult, error) {
	var res store.WorkerEventsWriteResult
	if err := in.Validate(); err != nil {
		return res, fmt.Errorf("postgres: write worker events: %w", err)
	}
	if err := checkText("worker_id", in.WorkerID, "owner_sub", in.OwnerSub, "projection_version", in.Version); err != nil {
		return res, fmt.Errorf("postgres: write worker events: %w", err)
	}
	docs := make([]string, len(in.Events))
	for i, e := range in.Events {
		c, err := runs.CanonicalizeRaw(e.Doc)
		if err != nil {
			return res, fmt.Errorf("postgres: write worker events of %s: events[%d].doc: %w", in.WorkerID, i, err)
		}
		if err := checkText(fmt.Sprintf("events[%d].hash", i), e.Hash); err != nil {
			return res, fmt.Errorf("postgres: write worker events: %w", err)
		}
		docs[i] = string(c)
	}
	cursorID := store.WorkerEventsCursorID(in.WorkerID)
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		res = store.WorkerEventsWriteResult{}
		if !in.Force {
			var cur int64
			err := tx.QueryRow(ctx, `SELECT last_seq FROM khala_projection_checkpoints
				WHERE projection = 'codex_worker' AND entity_id = $1 FOR UPDATE`, cursorID).Scan(&cur)
			if err != nil && !errors.Is(err, pgx.ErrNoRows) {
				return err
			}
			if cur != in.ExpectSeq {
				return fmt.Errorf("event cursor is at %d, writer expected %d: %w", cur, in.ExpectSeq, store.ErrConflict)
			}
		}
		for i, e := range in.Events {
			key := store.WorkerEventDocKey(in.WorkerID, e.Seq)
			tag, err := tx.Exec(ctx, `INSERT INTO khala_documents
				(topic, doc_key, owner_sub, projection_version, runtime_source_seq, summary_hash, payload, updated_at)
				VALUES ($1, $2, $3, $4, $5, $6, $7, now()) ON CONFLICT (topic, doc_key) DO NOTHING`,
				store.TopicCodexWorkerEvents, key, in.OwnerSub, in.Version, e.Seq, e.Hash, docs[i])
			if err != nil {
				return fmt.Errorf("insert document %s: %w", key, err)
			}
			if tag.RowsAffected() == 0 {
				continue // already in the stream: never twice
			}
			var wm int64
			if err := tx.QueryRow(ctx, `INSERT INTO khala_topic_watermarks (topic, last_watermark) VALUES ($1, 1)
				ON CONFLICT (topic) DO UPDATE SET last_watermark = khala_topic_watermarks.last_watermark + 1
				RETURNING last_watermark`, store.TopicCodexWorkerEvents).Scan(&wm); err != nil {
				return fmt.Errorf("allocate watermark: %w", err)
			}
			if _, err := tx.Exec(ctx, `INSERT INTO khala_stream_events
				(topic, watermark, doc_key, owner_sub, doc_version, payload, payload_hash)
				VALUES ($1, $2, $3, $4, $5, $6, $7)`,
				store.TopicCodexWorkerEvents, wm, key, in.OwnerSub, e.Seq, docs[i], runs.PayloadHash([]byte(docs[i]))); err != nil {
				return fmt.Errorf("append stream row: %w", err)
			}
			res.Appended++
			res.LastWatermark = wm
		}
		last := in.Events[len(in.Events)-1]
		// The WHERE catches a cursor created concurrently after our "no
		// cursor" read (the row lock above cannot cover a missing row).
		tag, err := tx.Exec(ctx, `INSERT INTO khala_projection_checkpoints
			(projection, entity_id, doc_key, last_seq, summary_hash, projection_version, updated_at)
			VALUES ('codex_worker', $1, $2, $3, $4, $5, now())
			ON CONFLICT (projection, entity_id) DO UPDATE SET doc_key = excluded.doc_key,
				last_seq = excluded.last_seq, summary_hash = excluded.summary_hash,
				projection_version = excluded.projection_version, updated_at = excluded.updated_at
			WHERE $6 OR khala_projection_checkpoints.last_seq = $7`,
			cursorID, store.WorkerEventDocKey(in.WorkerID, last.Seq), last.Seq, last.Hash, in.Version, in.Force, in.ExpectSeq)
		if err != nil {
			return fmt.Errorf("upsert event cursor: %w", err)
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("event cursor created concurrently: %w", store.ErrConflict)
		}
		return nil
	})
	if err != nil {
		return store.WorkerEventsWriteResult{}, fmt.Errorf("postgres: write worker events of %s: %w", in.WorkerID, err)
	}
	return res, nil
}
