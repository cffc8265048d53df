package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/oaruntime/oaruntime/internal/runs"
	"github.com/oaruntime/oaruntime/internal/store"
)

var _ store.ProjectionStore = (*Store)(nil)

// LoadRunLog implements store.ProjectionStore. One read transaction on a WAL
// reader is a snapshot, so the run row and its events agree.
func (s *Store) LoadRunLog(ctx context.Context, runID string) (store.Run, []store.Event, error) {
	tx, err := s.reader.BeginTx(ctx, nil)
	if err != nil {
		return store.Run{}, nil, fmt.Errorf("sqlite: load run log %s: %w", runID, err)
	}
	defer func() { _ = tx.Rollback() }()
	run, err := scanRun(tx.QueryRowContext(ctx, `SELECT `+runColumns+` FROM runs WHERE run_id = ?`, runID))
	if errors.Is(err, sql.ErrNoRows) {
		return store.Run{}, nil, fmt.Errorf("sqlite: load run log %s: %w", runID, store.ErrNotFound)
	}
	if err != nil {
		return store.Run{}, nil, fmt.Errorf("sqlite: load run log %s: %w", runID, err)
	}
	rows, err := tx.QueryContext(ctx, `SELECT `+eventColumns+` FROM run_events
		WHERE run_id = ? AND seq <= ? ORDER BY seq`, runID, run.LatestSeq)
	if err != nil {
		return store.Run{}, nil, fmt.Errorf("sqlite: load run log %s: %w", runID, err)
	}
	defer rows.Close()
	var evs []store.Event
	for rows.Next() {
		e, err := scanEvent(rows)
		if err != nil {
			return store.Run{}, nil, fmt.Errorf("sqlite: load run log %s: %w", runID, err)
		}
		evs = append(evs, e)
	}
	if err := rows.Err(); err != nil {
		return store.Run{}, nil, fmt.Errorf("sqlite: load run log %s: %w", runID, err)
	}
	return run, evs, nil
}

// LoadRunLogsAndCheckpoints reads the runs, logs and checkpoints of
// projection of runIDs in one read transaction (a snapshot; see
// projection.BatchLogLoader); results are in runIDs' order. When a run's
// events above its retention floor are all there and none lies at or below
// it, only the last is read and the others are counted (store.RunLog.Elided):
// projecting a long run does not read its whole log each time.
func (s *Store) LoadRunLogsAndCheckpoints(ctx context.Context, projection string, runIDs []string) ([]store.RunLog, error) {
	tx, err := s.reader.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("sqlite: load run logs: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	out := make([]store.RunLog, len(runIDs))
	seen := make(map[string]bool, len(runIDs))
	for i, id := range runIDs {
		if seen[id] {
			return nil, fmt.Errorf("sqlite: load run logs: run %s given twice", id)
		}
		seen[id] = true
		if out[i], err = loadRunTail(ctx, tx, projection, id); err != nil {
			return nil, fmt.Errorf("sqlite: load run log %s: %w", id, err)
		}
	}
	return out, nil
}

// loadRunTail reads one run for LoadRunLogsAndCheckpoints; an unknown run
// is a RunLog with ErrNotFound, a failed read an error.
func loadRunTail(ctx context.Context, tx *sql.Tx, projection, id string) (store.RunLog, error) {
	var lr store.RunLog
	c, err := scanCheckpoint(tx.QueryRowContext(ctx, `SELECT `+checkpointColumns+`
		FROM khala_projection_checkpoints WHERE projection = ? AND entity_id = ?`, projection, id))
	switch {
	case err == nil:
		lr.Checkpoint = &c
	case !errors.Is(err, sql.ErrNoRows):
		return lr, err
	}
	lr.Run, err = scanRun(tx.QueryRowContext(ctx, `SELECT `+runColumns+` FROM runs WHERE run_id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return store.RunLog{Err: fmt.Errorf("sqlite: load run log %s: %w", id, store.ErrNotFound)}, nil
	}
	if err != nil {
		return lr, err
	}
	floor, latest := lr.Run.RetentionFloorSeq, lr.Run.LatestSeq
	if latest-floor > store.ElideLogsAbove {
		var n, low int64
		if err := tx.QueryRowContext(ctx, `SELECT count(*), coalesce(min(seq), 0) FROM run_events WHERE run_id = ? AND seq <= ?`,
			id, latest).Scan(&n, &low); err != nil {
			return lr, err
		}
		if n == latest-floor && low == floor+1 {
			lr.Elided = n - 1
		}
	}
	after := int64(0) // seq > 0: the whole log, below the floor included
	if lr.Elided > 0 {
		after = floor + lr.Elided
	}
	rows, err := tx.QueryContext(ctx, `SELECT `+eventColumns+` FROM run_events
		WHERE run_id = ? AND seq <= ? AND seq > ? ORDER BY seq`, id, latest, after)
	if err != nil {
		return lr, err
	}
	defer rows.Close()
	for rows.Next() {
		e, err := scanEvent(rows)
		if err != nil {
			return lr, err
		}
		lr.Events = append(lr.Events, e)
	}
	return lr, rows.Err()
}

// WriteProjection implements store.ProjectionStore.
func (s *Store) WriteProjection(ctx context.Context, in store.ProjectionWriteInput) (int64, error) {
	if err := in.Check(); err != nil {
		return 0, fmt.Errorf("sqlite: write projection: %w", err)
	}
	doc, err := runs.CanonicalizeRaw(in.Doc)
	if err != nil {
		return 0, fmt.Errorf("sqlite: write projection %s/%s: doc: %w", in.Projection, in.EntityID, err)
	}
	var wm int64
	err = s.write(ctx, func(tx *sql.Tx, _ func(store.Notice)) error {
		if !in.Force {
			var cur int64
			err := tx.QueryRowContext(ctx, `SELECT last_seq FROM khala_projection_checkpoints
				WHERE projection = ? AND entity_id = ?`, in.Projection, in.EntityID).Scan(&cur)
			switch {
			case errors.Is(err, sql.ErrNoRows):
				cur = -1
			case err != nil:
				return err
			}
			if cur != in.ExpectSeq {
				return fmt.Errorf("checkpoint is at %d, writer expected %d: %w", cur, in.ExpectSeq, store.ErrConflict)
			}
		}
		ts := formatTS(s.now())
		if err := tx.QueryRowContext(ctx, `INSERT INTO khala_topic_watermarks (topic, last_watermark) VALUES (?, 1)
			ON CONFLICT (topic) DO UPDATE SET last_watermark = last_watermark + 1
			RETURNING last_watermark`, in.Topic).Scan(&wm); err != nil {
			return fmt.Errorf("allocate watermark: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO khala_documents
			(topic, doc_key, owner_sub, projection_version, runtime_source_seq, summary_hash, payload, updated_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (topic, doc_key) DO UPDATE SET owner_sub = excluded.owner_sub,
				projection_version = excluded.projection_version, runtime_source_seq = excluded.runtime_source_seq,
				summary_hash = excluded.summary_hash, payload = excluded.payload, updated_at = excluded.updated_at`,
			in.Topic, in.DocKey, in.OwnerSub, in.Version, in.SourceSeq, in.Hash, string(doc), ts); err != nil {
			return fmt.Errorf("upsert document: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO khala_stream_events
			(topic, watermark, doc_key, owner_sub, doc_version, payload, payload_hash, created_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
			in.Topic, wm, in.DocKey, in.OwnerSub, in.SourceSeq, string(doc), runs.PayloadHash(doc), ts); err != nil {
			return fmt.Errorf("append stream row: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO khala_projection_checkpoints
			(projection, entity_id, doc_key, last_seq, summary_hash, projection_version, updated_at)
			VALUES (?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (projection, entity_id) DO UPDATE SET doc_key = excluded.doc_key,
				last_seq = excluded.last_seq, summary_hash = excluded.summary_hash,
				projection_version = excluded.projection_version, updated_at = excluded.updated_at`,
			in.Projection, in.EntityID, in.DocKey, in.SourceSeq, in.Hash, in.Version, ts); err != nil {
			return fmt.Errorf("upsert checkpoint: %w", err)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("sqlite: write projection %s/%s: %w", in.Projection, in.EntityID, err)
	}
	return wm, nil
}

const checkpointColumns = `projection, entity_id, doc_key, last_seq, summary_hash, projection_version, updated_at`

func scanCheckpoint(row rowScanner) (store.Checkpoint, error) {
	var (
		c  store.Checkpoint
		ts string
	)
	if err := row.Scan(&c.Projection, &c.EntityID, &c.DocKey, &c.LastSeq, &c.SummaryHash, &c.ProjectionVersion, &ts); err != nil {
		return store.Checkpoint{}, err
	}
	var err error
	c.UpdatedAt, err = parseTS(ts)
	return c, err
}

// GetCheckpoint implements store.ProjectionStore.
func (s *Store) GetCheckpoint(ctx context.Context, projection, entityID string) (store.Checkpoint, error) {
	c, err := scanCheckpoint(s.reader.QueryRowContext(ctx, `SELECT `+checkpointColumns+`
		FROM khala_projection_checkpoints WHERE projection = ? AND entity_id = ?`, projection, entityID))
	if errors.Is(err, sql.ErrNoRows) {
		return store.Checkpoint{}, fmt.Errorf("sqlite: checkpoint %s/%s: %w", projection, entityID, store.ErrNotFound)
	}
	if err != nil {
		return store.Checkpoint{}, fmt.Errorf("sqlite: checkpoint %s/%s: %w", projection, entityID, err)
	}
	return c, nil
}

// ListCheckpoints implements store.ProjectionStore.
func (s *Store) ListCheckpoints(ctx context.Context, projection string, limit int) ([]store.Checkpoint, error) {
	if limit <= 0 {
		limit = 100
	}
	rows, err := s.reader.QueryContext(ctx, `SELECT `+checkpointColumns+` FROM khala_projection_checkpoints
		WHERE projection = ? ORDER BY updated_at DESC, entity_id LIMIT ?`, projection, limit)
	if err != nil {
		return nil, fmt.Errorf("sqlite: list checkpoints: %w", err)
	}
	defer rows.Close()
	var out []store.Checkpoint
	for rows.Next() {
		c, err := scanCheckpoint(rows)
		if err != nil {
			return nil, fmt.Errorf("sqlite: list checkpoints: %w", err)
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: list checkpoints: %w", err)
	}
	return out, nil
}

// GetDocument implements store.ProjectionStore.
func (s *Store) GetDocument(ctx context.Context, topic, docKey string) (store.ProjectionDocument, error) {
	var (
		d           store.ProjectionDocument
		payload, ts string
	)
	err := s.reader.QueryRowContext(ctx, `SELECT topic, doc_key, owner_sub, projection_version,
		runtime_source_seq, summary_hash, payload, updated_at
		FROM khala_documents WHERE topic = ? AND doc_key = ?`, topic, docKey).
		Scan(&d.Topic, &d.DocKey, &d.OwnerSub, &d.ProjectionVersion, &d.SourceSeq, &d.SummaryHash, &payload, &ts)
	if errors.Is(err, sql.ErrNoRows) {
		return store.ProjectionDocument{}, fmt.Errorf("sqlite: document %s/%s: %w", topic, docKey, store.ErrNotFound)
	}
	if err != nil {
		return store.ProjectionDocument{}, fmt.Errorf("sqlite: document %s/%s: %w", topic, docKey, err)
	}
	d.Payload = []byte(payload)
	if d.UpdatedAt, err = parseTS(ts); err != nil {
		return store.ProjectionDocument{}, err
	}
	return d, nil
}

// ReadStream implements store.ProjectionStore. limit <= 0 means 200.
func (s *Store) ReadStream(ctx context.Context, topic string, after int64, limit int) ([]store.StreamRow, error) {
	if limit <= 0 {
		limit = 200
	}
	rows, err := s.reader.QueryContext(ctx, `SELECT topic, watermark, doc_key, owner_sub, doc_version,
		payload, payload_hash, created_at FROM khala_stream_events
		WHERE topic = ? AND watermark > ? ORDER BY watermark LIMIT ?`, topic, after, limit)
	if err != nil {
		return nil, fmt.Errorf("sqlite: read stream %s: %w", topic, err)
	}
	defer rows.Close()
	var out []store.StreamRow
	for rows.Next() {
		var (
			r           store.StreamRow
			payload, ts string
		)
		if err := rows.Scan(&r.Topic, &r.Watermark, &r.DocKey, &r.OwnerSub, &r.DocVersion, &payload, &r.PayloadHash, &ts); err != nil {
			return nil, fmt.Errorf("sqlite: read stream %s: %w", topic, err)
		}
		r.Payload = []byte(payload)
		if r.CreatedAt, err = parseTS(ts); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: read stream %s: %w", topic, err)
	}
	return out, nil
}

// ProjectionCandidates implements store.ProjectionStore.
func (s *Store) ProjectionCandidates(ctx context.Context, q store.CandidateQuery) ([]store.ProjectionCandidate, error) {
	if q.Limit <= 0 {
		q.Limit = 100
	}
	after := ""
	if !q.AfterUpdatedAt.IsZero() {
		after = formatTS(q.AfterUpdatedAt)
	}
	rows, err := s.reader.QueryContext(ctx, `SELECT r.run_id, r.latest_seq, c.last_seq, r.updated_at
		FROM runs r LEFT JOIN khala_projection_checkpoints c
			ON c.projection = 'run' AND c.entity_id = r.run_id
		WHERE (r.updated_at > ? OR (r.updated_at = ? AND r.run_id > ?))
			AND (c.entity_id IS NULL OR c.last_seq <> r.latest_seq OR c.projection_version <> ?)
		ORDER BY r.updated_at, r.run_id LIMIT ?`, after, after, q.AfterRunID, q.Version, q.Limit)
	if err != nil {
		return nil, fmt.Errorf("sqlite: projection candidates: %w", err)
	}
	defer rows.Close()
	var out []store.ProjectionCandidate
	for rows.Next() {
		var (
			c  store.ProjectionCandidate
			cp sql.NullInt64
			ts string
		)
		if err := rows.Scan(&c.EntityID, &c.LatestSeq, &cp, &ts); err != nil {
			return nil, fmt.Errorf("sqlite: projection candidates: %w", err)
		}
		c.HasCheckpoint, c.CheckpointSeq = cp.Valid, cp.Int64
		if c.UpdatedAt, err = parseTS(ts); err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: projection candidates: %w", err)
	}
	return out, nil
}

// ListRunIDs implements store.ProjectionStore.
func (s *Store) ListRunIDs(ctx context.Context, after string, limit int) ([]string, error) {
	if limit <= 0 {
		limit = 100
	}
	rows, err := s.reader.QueryContext(ctx, `SELECT run_id FROM runs WHERE run_id > ? ORDER BY run_id LIMIT ?`, after, limit)
	if err != nil {
		return nil, fmt.Errorf("sqlite: list run ids: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("sqlite: list run ids: %w", err)
		}
		out = append(out, id)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: list run ids: %w", err)
	}
	return out, nil
}

func detailOrEmpty(b []byte) (string, error) {
	if len(strings.TrimSpace(string(b))) == 0 {
		return "{}", nil
	}
	c, err := runs.CanonicalizeRaw(b)
	if err != nil {
		return "", fmt.Errorf("detail: %w", err)
	}
	return string(c), nil
}

const driftColumns = `id, projection, entity_id, reason_class, detail, origin, counted, created_at`

func scanDrift(row rowScanner) (store.DriftIncident, error) {
	var (
		d          store.DriftIncident
		detail, ts string
	)
	if err := row.Scan(&d.ID, &d.Projection, &d.EntityID, &d.ReasonClass, &detail, &d.Origin, &d.Counted, &ts); err != nil {
		return store.DriftIncident{}, err
	}
	d.Detail = []byte(detail)
	var err error
	d.CreatedAt, err = parseTS(ts)
	return d, err
}

// RecordDrift implements store.ProjectionStore.
func (s *Store) RecordDrift(ctx context.Context, d store.DriftIncident) (store.DriftIncident, error) {
	if d.ReasonClass == "" {
		return store.DriftIncident{}, errors.New("sqlite: record drift: reason_class is required")
	}
	detail, err := detailOrEmpty(d.Detail)
	if err != nil {
		return store.DriftIncident{}, fmt.Errorf("sqlite: record drift: %w", err)
	}
	var out store.DriftIncident
	err = s.write(ctx, func(tx *sql.Tx, _ func(store.Notice)) error {
		var err error
		out, err = scanDrift(tx.QueryRowContext(ctx, `INSERT INTO khala_drift_incidents
			(projection, entity_id, reason_class, detail, origin, counted, created_at)
			VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING `+driftColumns,
			d.Projection, d.EntityID, d.ReasonClass, detail, d.Origin, d.Counted, formatTS(s.now())))
		return err
	})
	if err != nil {
		return store.DriftIncident{}, fmt.Errorf("sqlite: record drift: %w", err)
	}
	return out, nil
}

func collectDrift(rows *sql.Rows) ([]store.DriftIncident, error) {
	defer rows.Close()
	var out []store.DriftIncident
	for rows.Next() {
		d, err := scanDrift(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

// ListDrift implements store.ProjectionStore.
func (s *Store) ListDrift(ctx context.Context, q store.DriftQuery) ([]store.DriftIncident, error) {
	if q.Limit <= 0 {
		q.Limit = 100
	}
	order := "DESC"
	if q.AfterID > 0 {
		order = "ASC"
	}
	rows, err := s.reader.QueryContext(ctx, `SELECT `+driftColumns+` FROM khala_drift_incidents
		WHERE id > ? AND (? = '' OR reason_class = ?) AND (? = '' OR entity_id = ?)
		ORDER BY id `+order+` LIMIT ?`,
		q.AfterID, q.ReasonClass, q.ReasonClass, q.EntityID, q.EntityID, q.Limit)
	if err != nil {
		return nil, fmt.Errorf("sqlite: list drift: %w", err)
	}
	out, err := collectDrift(rows)
	if err != nil {
		return nil, fmt.Errorf("sqlite: list drift: %w", err)
	}
	return out, nil
}

// ClaimUncountedDrift implements store.ProjectionStore.
func (s *Store) ClaimUncountedDrift(ctx context.Context, limit int) ([]store.DriftIncident, error) {
	if limit <= 0 {
		limit = 100
	}
	// Most cycles find nothing: answer that from a reader instead of
	// taking the single write connection.
	if none, err := s.noneUncounted(ctx, "khala_drift_incidents"); err != nil || none {
		return nil, err
	}
	var out []store.DriftIncident
	err := s.write(ctx, func(tx *sql.Tx, _ func(store.Notice)) error {
		rows, err := tx.QueryContext(ctx, `UPDATE khala_drift_incidents SET counted = 1
			WHERE id IN (SELECT id FROM khala_drift_incidents WHERE counted = 0 ORDER BY id LIMIT ?)
			RETURNING `+driftColumns, limit)
		if err != nil {
			return err
		}
		out, err = collectDrift(rows)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("sqlite: claim drift: %w", err)
	}
	return out, nil
}

const replayColumns = `id, scope, entity_id, result, error, duration_us, origin, counted, created_at`

func scanReplay(row rowScanner) (store.ReplayResult, error) {
	var (
		r  store.ReplayResult
		us int64
		ts string
	)
	if err := row.Scan(&r.ID, &r.Scope, &r.EntityID, &r.Result, &r.Error, &us, &r.Origin, &r.Counted, &ts); err != nil {
		return store.ReplayResult{}, err
	}
	r.Duration = time.Duration(us) * time.Microsecond
	var err error
	r.CreatedAt, err = parseTS(ts)
	return r, err
}

func collectReplays(rows *sql.Rows) ([]store.ReplayResult, error) {
	defer rows.Close()
	var out []store.ReplayResult
	for rows.Next() {
		r, err := scanReplay(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// RecordReplay implements store.ProjectionStore.
func (s *Store) RecordReplay(ctx context.Context, r store.ReplayResult) (store.ReplayResult, error) {
	if r.Result != store.ReplayOK && r.Result != store.ReplayError {
		return store.ReplayResult{}, fmt.Errorf("sqlite: record replay: result must be ok or error, got %q", r.Result)
	}
	var out store.ReplayResult
	err := s.write(ctx, func(tx *sql.Tx, _ func(store.Notice)) error {
		var err error
		out, err = scanReplay(tx.QueryRowContext(ctx, `INSERT INTO khala_replays
			(scope, entity_id, result, error, duration_us, origin, counted, created_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING `+replayColumns,
			r.Scope, r.EntityID, r.Result, r.Error, r.Duration.Microseconds(), r.Origin, r.Counted, formatTS(s.now())))
		return err
	})
	if err != nil {
		return store.ReplayResult{}, fmt.Errorf("sqlite: record replay: %w", err)
	}
	return out, nil
}

// ListReplays implements store.ProjectionStore.
func (s *Store) ListReplays(ctx context.Context, afterID int64, limit int) ([]store.ReplayResult, error) {
	if limit <= 0 {
		limit = 100
	}
	order := "DESC"
	if afterID > 0 {
		order = "ASC"
	}
	rows, err := s.reader.QueryContext(ctx, `SELECT `+replayColumns+` FROM khala_replays
		WHERE id > ? ORDER BY id `+order+` LIMIT ?`, afterID, limit)
	if err != nil {
		return nil, fmt.Errorf("sqlite: list replays: %w", err)
	}
	out, err := collectReplays(rows)
	if err != nil {
		return nil, fmt.Errorf("sqlite: list replays: %w", err)
	}
	return out, nil
}

// ClaimUncountedReplays implements store.ProjectionStore.
func (s *Store) ClaimUncountedReplays(ctx context.Context, limit int) ([]store.ReplayResult, error) {
	if limit <= 0 {
		limit = 100
	}
	// Most cycles find nothing: answer that from a reader instead of
	// taking the single write connection.
	if none, err := s.noneUncounted(ctx, "khala_replays"); err != nil || none {
		return nil, err
	}
	var out []store.ReplayResult
	err := s.write(ctx, func(tx *sql.Tx, _ func(store.Notice)) error {
		rows, err := tx.QueryContext(ctx, `UPDATE khala_replays SET counted = 1
			WHERE id IN (SELECT id FROM khala_replays WHERE counted = 0 ORDER BY id LIMIT ?)
			RETURNING `+replayColumns, limit)
		if err != nil {
			return err
		}
		out, err = collectReplays(rows)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("sqlite: claim replays: %w", err)
	}
	return out, nil
}

func (s *Store) noneUncounted(ctx context.Context, table string) (bool, error) {
	var n int
	err := s.reader.QueryRowContext(ctx, `SELECT COUNT(*) FROM (SELECT 1 FROM `+table+` WHERE counted = 0 LIMIT 1)`).Scan(&n)
	if err != nil {
		return false, fmt.Errorf("sqlite: %s: %w", table, err)
	}
	return n == 0, nil
}
