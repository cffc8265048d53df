package postgres

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/oaruntime/oaruntime/internal/runs"
	"github.com/oaruntime/oaruntime/internal/store"
)

var _ store.ProjectionStore = (*Store)(nil)

// LoadRunLog implements store.ProjectionStore (see loadRunLogs).
func (s *Store) LoadRunLog(ctx context.Context, runID string) (store.Run, []store.Event, error) {
	logs, err := s.loadRunLogs(ctx, "", []string{runID}, true)
	if err != nil {
		return store.Run{}, nil, err
	}
	return logs[0].Run, logs[0].Events, logs[0].Err
}

func checkWriteInput(in store.ProjectionWriteInput) error {
	if err := in.Check(); err != nil {
		return err
	}
	return checkText("entity_id", in.EntityID, "topic", in.Topic, "doc_key", in.DocKey,
		"owner_sub", in.OwnerSub, "projection_version", in.Version, "summary_hash", in.Hash)
}

// LoadRunLogsAndCheckpoints reads the runs, logs and checkpoints of
// projection of runIDs in one snapshot and one round trip (see
// projection.BatchLogLoader); results are in runIDs' order. What a run
// summary does not need is left out: event payloads (model output, most of
// a log's bytes) and, when the log is complete, every event but the last
// (counted instead; see store.RunLog.Elided), so that projecting a long
// run does not read its whole log each time.
func (s *Store) LoadRunLogsAndCheckpoints(ctx context.Context, projection string, runIDs []string) ([]store.RunLog, error) {
	if !storable(projection) {
		return nil, fmt.Errorf("postgres: load run logs: projection %q is not storable", projection)
	}
	return s.loadRunLogs(ctx, projection, runIDs, false)
}

// loadRunLogs reads runIDs' rows, their events with seq <= latest_seq
// (all of them with their payloads when payloads is set, else as
// LoadRunLogsAndCheckpoints describes) and,
// unless projection is "", their checkpoints of projection: one REPEATABLE
// READ snapshot, one round trip. Each read is a key lookup per run
// (LATERAL ... OFFSET 0 keeps the planner from turning them into a scan of
// a young table whose statistics say it is small).
func (s *Store) loadRunLogs(ctx context.Context, projection string, runIDs []string, payloads bool) ([]store.RunLog, error) {
	out := make([]store.RunLog, len(runIDs))
	at := make(map[string]int, len(runIDs))
	ids := make([]string, 0, len(runIDs))
	for i, id := range runIDs {
		if !storable(id) {
			out[i].Err = fmt.Errorf("postgres: load run log %q: %w", id, store.ErrNotFound)
			continue
		}
		if _, dup := at[id]; dup {
			return nil, fmt.Errorf("postgres: load run logs: run %s given twice", id)
		}
		at[id] = i
		ids = append(ids, id)
	}
	found := make([]bool, len(runIDs))
	b := &pgx.Batch{}
	b.Queue(`BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY`)
	if projection != "" {
		b.Queue(`SELECT c.* FROM unnest($2::text[]) AS i(id) CROSS JOIN LATERAL (
			SELECT `+checkpointCols+` FROM khala_projection_checkpoints
			WHERE projection = $1 AND entity_id = i.id OFFSET 0) c`, projection, ids).Query(func(rows pgx.Rows) error {
			cps, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (store.Checkpoint, error) { return scanCheckpoint(r) })
			for _, c := range cps {
				out[at[c.EntityID]].Checkpoint = &c
			}
			return err
		})
	}
	b.Queue(`SELECT r.* FROM unnest($1::text[]) AS i(id) CROSS JOIN LATERAL (
		SELECT `+runCols+` FROM runs WHERE run_id = i.id OFFSET 0) r`, ids).Query(func(rows pgx.Rows) error {
		rs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (store.Run, error) { return scanRun(r) })
		for _, r := range rs {
			i := at[r.RunID]
			out[i].Run, found[i] = r, true
		}
		return err
	})
	if payloads {
		b.Queue(`SELECT e.* FROM unnest($1::text[]) AS i(id) CROSS JOIN LATERAL (
			SELECT `+eventCols+` FROM run_events
			WHERE run_id = i.id AND seq <= (SELECT latest_seq FROM runs WHERE run_id = i.id)
			ORDER BY seq OFFSET 0) e`, ids).Query(func(rows pgx.Rows) error {
			evs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (store.Event, error) { return scanEvent(r) })
			for _, e := range evs {
				i := at[e.RunID]
				out[i].Events = append(out[i].Events, e)
			}
			return err
		})
	} else {
		// The projector's read (see store.RunLog.Elided): when the run's
		// events above its retention floor are all there (counted, not
		// read), only the last is read, and none of them with its payload.
		// A log with a gap, or with events at or below the floor, is read
		// whole, so that the summary reports what it finds exactly as from
		// a full read.
		cols := strings.Replace(eventCols, "payload,", "NULL::json AS payload,", 1)
		b.Queue(`SELECT e.*, x.elided FROM unnest($1::text[]) AS i(id)
			CROSS JOIN LATERAL (SELECT latest_seq, retention_floor_seq FROM runs WHERE run_id = i.id OFFSET 0) r
			CROSS JOIN LATERAL (SELECT CASE
				WHEN r.latest_seq - r.retention_floor_seq > `+strconv.Itoa(store.ElideLogsAbove)+`
				 AND NOT EXISTS (SELECT 1 FROM run_events WHERE run_id = i.id AND seq <= r.retention_floor_seq)
				 AND (SELECT count(*) FROM run_events
				      WHERE run_id = i.id AND seq > r.retention_floor_seq AND seq <= r.latest_seq) = r.latest_seq - r.retention_floor_seq
				THEN r.latest_seq - r.retention_floor_seq - 1 ELSE 0 END AS elided) x
			CROSS JOIN LATERAL (
				SELECT `+cols+` FROM run_events
				WHERE run_id = i.id AND seq <= r.latest_seq AND (x.elided = 0 OR seq > r.retention_floor_seq + x.elided)
				ORDER BY seq OFFSET 0) e`, ids).Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var elided int64
				e, err := scanEvent(rows, &elided)
				if err != nil {
					return err
				}
				i := at[e.RunID]
				out[i].Events, out[i].Elided = append(out[i].Events, e), elided
			}
			return rows.Err()
		})
	}
	b.Queue(`COMMIT`)
	if err := s.pool.SendBatch(ctx, b).Close(); err != nil {
		return nil, fmt.Errorf("postgres: load run logs: %w", err)
	}
	for _, id := range ids {
		i := at[id]
		if !found[i] {
			out[i] = store.RunLog{Err: fmt.Errorf("postgres: load run log %s: %w", id, store.ErrNotFound)}
			continue
		}
		slices.SortFunc(out[i].Events, func(x, y store.Event) int { return cmp.Compare(x.Seq, y.Seq) })
	}
	return out, nil
}

// WriteProjection implements store.ProjectionStore. Locks are taken in one
// order (checkpoint row, then the topic's watermark row) by every writer.
func (s *Store) WriteProjection(ctx context.Context, in store.ProjectionWriteInput) (int64, error) {
	if err := checkWriteInput(in); err != nil {
		return 0, fmt.Errorf("postgres: write projection: %w", err)
	}
	doc, err := runs.CanonicalizeRaw(in.Doc)
	if err != nil {
		return 0, fmt.Errorf("postgres: write projection %s/%s: doc: %w", in.Projection, in.EntityID, err)
	}
	var wm int64
	err = s.pool.QueryRow(ctx, `SELECT oa_write_projection($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)`,
		in.Projection, in.EntityID, in.Topic, in.DocKey, in.OwnerSub, in.Version, in.SourceSeq, in.Hash,
		string(doc), runs.PayloadHash(doc), in.Force, in.ExpectSeq).Scan(&wm)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == sqlstateProjectionConflict {
		return 0, fmt.Errorf("postgres: write projection %s/%s: %s: %w", in.Projection, in.EntityID, pgErr.Message, store.ErrConflict)
	}
	if err != nil {
		return 0, fmt.Errorf("postgres: write projection %s/%s: %w", in.Projection, in.EntityID, err)
	}
	return wm, nil
}

// WriteProjections writes several projections in one call of
// oa_write_projections (migration 00080): one round trip, one transaction
// and a few set-based statements (the projector's batch; see
// projection.BatchWriter). When any of them fails, none is kept and each is
// written on its own, so every input gets the answer WriteProjection would
// give it.
func (s *Store) WriteProjections(ctx context.Context, ins []store.ProjectionWriteInput) ([]int64, []error) {
	wms, errs := make([]int64, len(ins)), make([]error, len(ins))
	if len(ins) == 0 {
		return wms, errs
	}
	// In topic, then entity order: the order the watermarks of a topic are
	// handed out in, as when the writes were made one by one in this order.
	order := make([]int, len(ins))
	for i := range ins {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool {
		x, y := ins[order[a]], ins[order[b]]
		return x.Topic < y.Topic || (x.Topic == y.Topic && x.EntityID < y.EntityID)
	})
	var a projectionArgs
	ok := true
	for _, i := range order {
		if ok = a.add(ins[i]); !ok {
			break
		}
	}
	if ok {
		var got []int64
		err := s.pool.QueryRow(ctx, `SELECT oa_write_projections($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)`,
			a.projection, a.entity, a.topic, a.docKey, a.owner, a.version, a.sourceSeq, a.hash,
			a.doc, a.payloadHash, a.force, a.expectSeq).Scan(&got)
		if err == nil && len(got) == len(ins) {
			for j, i := range order {
				wms[i] = got[j]
			}
			return wms, errs
		}
	}
	s.projectionFallbacks.Add(1)
	for i, in := range ins {
		wms[i], errs[i] = s.WriteProjection(ctx, in)
	}
	return wms, errs
}

// projectionArgs are the parallel arrays of oa_write_projections.
type projectionArgs struct {
	projection, entity, topic, docKey, owner, version, hash, doc, payloadHash []string
	sourceSeq, expectSeq                                                      []int64
	force                                                                     []bool
}

// add appends one write; false when it is invalid (it is then written on
// its own, which reports why).
func (a *projectionArgs) add(in store.ProjectionWriteInput) bool {
	if checkWriteInput(in) != nil {
		return false
	}
	doc, err := runs.CanonicalizeRaw(in.Doc)
	if err != nil {
		return false
	}
	a.projection = append(a.projection, in.Projection)
	a.entity = append(a.entity, in.EntityID)
	a.topic = append(a.topic, in.Topic)
	a.docKey = append(a.docKey, in.DocKey)
	a.owner = append(a.owner, in.OwnerSub)
	a.version = append(a.version, in.Version)
	a.sourceSeq = append(a.sourceSeq, in.SourceSeq)
	a.hash = append(a.hash, in.Hash)
	a.doc = append(a.doc, string(doc))
	a.payloadHash = append(a.payloadHash, runs.PayloadHash(doc))
	a.force = append(a.force, in.Force)
	a.expectSeq = append(a.expectSeq, in.ExpectSeq)
	return true
}

// sqlstateProjectionConflict is raised by oa_write_projection when the
// checkpoint precondition fails (migration 00060).
const sqlstateProjectionConflict = "OA002"

const checkpointCols = `projection, entity_id, doc_key, last_seq, summary_hash, projection_version, updated_at`

func scanCheckpoint(row pgx.Row) (store.Checkpoint, error) {
	var c store.Checkpoint
	if err := row.Scan(&c.Projection, &c.EntityID, &c.DocKey, &c.LastSeq, &c.SummaryHash, &c.ProjectionVersion, &c.UpdatedAt); err != nil {
		return store.Checkpoint{}, err
	}
	c.UpdatedAt = c.UpdatedAt.UTC()
	return c, nil
}

// GetCheckpoint implements store.ProjectionStore.
func (s *Store) GetCheckpoint(ctx context.Context, projection, entityID string) (store.Checkpoint, error) {
	if !storable(projection) || !storable(entityID) {
		return store.Checkpoint{}, fmt.Errorf("postgres: checkpoint %q/%q: %w", projection, entityID, store.ErrNotFound)
	}
	c, err := scanCheckpoint(s.pool.QueryRow(ctx, `SELECT `+checkpointCols+`
		FROM khala_projection_checkpoints WHERE projection = $1 AND entity_id = $2`, projection, entityID))
	if errors.Is(err, pgx.ErrNoRows) {
		return store.Checkpoint{}, fmt.Errorf("postgres: checkpoint %s/%s: %w", projection, entityID, store.ErrNotFound)
	}
	if err != nil {
		return store.Checkpoint{}, fmt.Errorf("postgres: checkpoint %s/%s: %w", projection, entityID, err)
	}
	return c, nil
}

// ListCheckpoints implements store.ProjectionStore.
func (s *Store) ListCheckpoints(ctx context.Context, projection string, limit int) ([]store.Checkpoint, error) {
	if limit <= 0 {
		limit = 100
	}
	if !storable(projection) {
		return nil, nil
	}
	rows, err := s.pool.Query(ctx, `SELECT `+checkpointCols+` FROM khala_projection_checkpoints
		WHERE projection = $1 ORDER BY updated_at DESC, entity_id LIMIT $2`, projection, limit)
	if err != nil {
		return nil, fmt.Errorf("postgres: list checkpoints: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (store.Checkpoint, error) { return scanCheckpoint(r) })
	if err != nil {
		return nil, fmt.Errorf("postgres: list checkpoints: %w", err)
	}
	return out, nil
}

// GetDocument implements store.ProjectionStore.
func (s *Store) GetDocument(ctx context.Context, topic, docKey string) (store.ProjectionDocument, error) {
	if !storable(topic) || !storable(docKey) {
		return store.ProjectionDocument{}, fmt.Errorf("postgres: document %q/%q: %w", topic, docKey, store.ErrNotFound)
	}
	var (
		d       store.ProjectionDocument
		payload []byte
	)
	err := s.pool.QueryRow(ctx, `SELECT topic, doc_key, owner_sub, projection_version,
		runtime_source_seq, summary_hash, payload, updated_at
		FROM khala_documents WHERE topic = $1 AND doc_key = $2`, topic, docKey).
		Scan(&d.Topic, &d.DocKey, &d.OwnerSub, &d.ProjectionVersion, &d.SourceSeq, &d.SummaryHash, &payload, &d.UpdatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return store.ProjectionDocument{}, fmt.Errorf("postgres: document %s/%s: %w", topic, docKey, store.ErrNotFound)
	}
	if err != nil {
		return store.ProjectionDocument{}, fmt.Errorf("postgres: document %s/%s: %w", topic, docKey, err)
	}
	d.Payload = json.RawMessage(payload)
	d.UpdatedAt = d.UpdatedAt.UTC()
	return d, nil
}

// ReadStream implements store.ProjectionStore. limit <= 0 means 200.
func (s *Store) ReadStream(ctx context.Context, topic string, after int64, limit int) ([]store.StreamRow, error) {
	if limit <= 0 {
		limit = 200
	}
	if !storable(topic) {
		return nil, nil
	}
	rows, err := s.pool.Query(ctx, `SELECT topic, watermark, doc_key, owner_sub, doc_version,
		payload, payload_hash, created_at FROM khala_stream_events
		WHERE topic = $1 AND watermark > $2 ORDER BY watermark LIMIT $3`, topic, after, limit)
	if err != nil {
		return nil, fmt.Errorf("postgres: read stream %s: %w", topic, err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (store.StreamRow, error) {
		var (
			r       store.StreamRow
			payload []byte
		)
		err := row.Scan(&r.Topic, &r.Watermark, &r.DocKey, &r.OwnerSub, &r.DocVersion, &payload, &r.PayloadHash, &r.CreatedAt)
		r.Payload = json.RawMessage(payload)
		r.CreatedAt = r.CreatedAt.UTC()
		return r, err
	})
	if err != nil {
		return nil, fmt.Errorf("postgres: read stream %s: %w", topic, err)
	}
	return out, nil
}

// ProjectionCandidates implements store.ProjectionStore.
func (s *Store) ProjectionCandidates(ctx context.Context, q store.CandidateQuery) ([]store.ProjectionCandidate, error) {
	if q.Limit <= 0 {
		q.Limit = 100
	}
	if !storable(q.AfterRunID) || !storable(q.Version) {
		return nil, errors.New("postgres: projection candidates: key contains NUL or invalid UTF-8")
	}
	var after *time.Time
	if !q.AfterUpdatedAt.IsZero() {
		t := q.AfterUpdatedAt.UTC()
		after = &t
	}
	// Two statements rather than one with "$1 IS NULL OR ...": a generic
	// plan for that cannot use the updated_at index, so every incremental
	// walk would read every run. The checkpoint is looked up per run (the
	// LIMIT keeps the planner from turning the lateral into a join): a walk
	// reads runs in index order and stops at the page size, whatever the
	// statistics of young, fast-growing tables say.
	const candidates = `SELECT r.run_id, r.latest_seq, c.last_seq, r.updated_at
		FROM runs r LEFT JOIN LATERAL (
			SELECT last_seq, projection_version FROM khala_projection_checkpoints
			WHERE projection = 'run' AND entity_id = r.run_id LIMIT 1) c ON true
		WHERE %s (c.last_seq IS NULL OR c.last_seq <> r.latest_seq OR c.projection_version <> $1)
		ORDER BY r.updated_at, r.run_id LIMIT $2`
	var (
		rows pgx.Rows
		err  error
	)
	if after == nil {
		rows, err = s.pool.Query(ctx, fmt.Sprintf(candidates, ""), q.Version, q.Limit)
	} else {
		rows, err = s.pool.Query(ctx, fmt.Sprintf(candidates, "r.updated_at >= $3 AND (r.updated_at, r.run_id) > ($3, $4) AND"), q.Version, q.Limit, *after, q.AfterRunID)
	}
	if err != nil {
		return nil, fmt.Errorf("postgres: projection candidates: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (store.ProjectionCandidate, error) {
		var (
			c  store.ProjectionCandidate
			cp *int64
		)
		err := row.Scan(&c.EntityID, &c.LatestSeq, &cp, &c.UpdatedAt)
		if cp != nil {
			c.HasCheckpoint, c.CheckpointSeq = true, *cp
		}
		c.UpdatedAt = c.UpdatedAt.UTC()
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("postgres: projection candidates: %w", err)
	}
	return out, nil
}

// ListRunIDs implements store.ProjectionStore.
func (s *Store) ListRunIDs(ctx context.Context, after string, limit int) ([]string, error) {
	if limit <= 0 {
		limit = 100
	}
	if !storable(after) {
		return nil, fmt.Errorf("postgres: list run ids: cursor contains NUL or invalid UTF-8")
	}
	rows, err := s.pool.Query(ctx, `SELECT run_id FROM runs WHERE run_id > $1 ORDER BY run_id LIMIT $2`, after, limit)
	if err != nil {
		return nil, fmt.Errorf("postgres: list run ids: %w", err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("postgres: list run ids: %w", err)
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
	if !storable(string(c)) {
		return "", errors.New("detail contains NUL or invalid UTF-8")
	}
	return string(c), nil
}

const driftCols = `id, projection, entity_id, reason_class, detail, origin, counted, created_at`

func scanDrift(row pgx.Row) (store.DriftIncident, error) {
	var (
		d      store.DriftIncident
		detail []byte
	)
	if err := row.Scan(&d.ID, &d.Projection, &d.EntityID, &d.ReasonClass, &detail, &d.Origin, &d.Counted, &d.CreatedAt); err != nil {
		return store.DriftIncident{}, err
	}
	d.Detail = json.RawMessage(detail)
	d.CreatedAt = d.CreatedAt.UTC()
	return d, nil
}

// RecordDrift implements store.ProjectionStore.
func (s *Store) RecordDrift(ctx context.Context, d store.DriftIncident) (store.DriftIncident, error) {
	if d.ReasonClass == "" {
		return store.DriftIncident{}, errors.New("postgres: record drift: reason_class is required")
	}
	if err := checkText("projection", d.Projection, "entity_id", d.EntityID, "reason_class", d.ReasonClass, "origin", d.Origin); err != nil {
		return store.DriftIncident{}, fmt.Errorf("postgres: record drift: %w", err)
	}
	detail, err := detailOrEmpty(d.Detail)
	if err != nil {
		return store.DriftIncident{}, fmt.Errorf("postgres: record drift: %w", err)
	}
	out, err := scanDrift(s.pool.QueryRow(ctx, `INSERT INTO khala_drift_incidents
		(projection, entity_id, reason_class, detail, origin, counted)
		VALUES ($1, $2, $3, $4, $5, $6) RETURNING `+driftCols,
		d.Projection, d.EntityID, d.ReasonClass, detail, d.Origin, d.Counted))
	if err != nil {
		return store.DriftIncident{}, fmt.Errorf("postgres: record drift: %w", err)
	}
	return out, nil
}

// ListDrift implements store.ProjectionStore.
func (s *Store) ListDrift(ctx context.Context, q store.DriftQuery) ([]store.DriftIncident, error) {
	if q.Limit <= 0 {
		q.Limit = 100
	}
	if !storable(q.ReasonClass) || !storable(q.EntityID) {
		return nil, nil
	}
	order := "DESC"
	if q.AfterID > 0 {
		order = "ASC"
	}
	rows, err := s.pool.Query(ctx, `SELECT `+driftCols+` FROM khala_drift_incidents
		WHERE id > $1 AND ($2 = '' OR reason_class = $2) AND ($3 = '' OR entity_id = $3)
		ORDER BY id `+order+` LIMIT $4`, q.AfterID, q.ReasonClass, q.EntityID, q.Limit)
	if err != nil {
		return nil, fmt.Errorf("postgres: list drift: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (store.DriftIncident, error) { return scanDrift(r) })
	if err != nil {
		return nil, fmt.Errorf("postgres: list drift: %w", err)
	}
	return out, nil
}

// ClaimUncountedDrift implements store.ProjectionStore. SKIP LOCKED lets
// replicas claim disjoint rows without waiting for each other.
func (s *Store) ClaimUncountedDrift(ctx context.Context, limit int) ([]store.DriftIncident, error) {
	if limit <= 0 {
		limit = 100
	}
	rows, err := s.pool.Query(ctx, `UPDATE khala_drift_incidents SET counted = true
		WHERE id IN (SELECT id FROM khala_drift_incidents WHERE NOT counted ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
		RETURNING `+driftCols, limit)
	if err != nil {
		return nil, fmt.Errorf("postgres: claim drift: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (store.DriftIncident, error) { return scanDrift(r) })
	if err != nil {
		return nil, fmt.Errorf("postgres: claim drift: %w", err)
	}
	return out, nil
}

const replayCols = `id, scope, entity_id, result, error, duration_us, origin, counted, created_at`

func scanReplay(row pgx.Row) (store.ReplayResult, error) {
	var (
		r  store.ReplayResult
		us int64
	)
	if err := row.Scan(&r.ID, &r.Scope, &r.EntityID, &r.Result, &r.Error, &us, &r.Origin, &r.Counted, &r.CreatedAt); err != nil {
		return store.ReplayResult{}, err
	}
	r.Duration = time.Duration(us) * time.Microsecond
	r.CreatedAt = r.CreatedAt.UTC()
	return r, nil
}

// RecordReplay implements store.ProjectionStore.
func (s *Store) RecordReplay(ctx context.Context, r store.ReplayResult) (store.ReplayResult, error) {
	if r.Result != store.ReplayOK && r.Result != store.ReplayError {
		return store.ReplayResult{}, fmt.Errorf("postgres: record replay: result must be ok or error, got %q", r.Result)
	}
	if !storable(r.Error) {
		r.Error = strings.ToValidUTF8(strings.ReplaceAll(r.Error, "\x00", ""), "?")
	}
	if err := checkText("scope", r.Scope, "entity_id", r.EntityID, "origin", r.Origin); err != nil {
		return store.ReplayResult{}, fmt.Errorf("postgres: record replay: %w", err)
	}
	out, err := scanReplay(s.pool.QueryRow(ctx, `INSERT INTO khala_replays
		(scope, entity_id, result, error, duration_us, origin, counted)
		VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING `+replayCols,
		r.Scope, r.EntityID, r.Result, r.Error, r.Duration.Microseconds(), r.Origin, r.Counted))
	if err != nil {
		return store.ReplayResult{}, fmt.Errorf("postgres: record replay: %w", err)
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
	rows, err := s.pool.Query(ctx, `SELECT `+replayCols+` FROM khala_replays
		WHERE id > $1 ORDER BY id `+order+` LIMIT $2`, afterID, limit)
	if err != nil {
		return nil, fmt.Errorf("postgres: list replays: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (store.ReplayResult, error) { return scanReplay(r) })
	if err != nil {
		return nil, fmt.Errorf("postgres: list replays: %w", err)
	}
	return out, nil
}

// ClaimUncountedReplays implements store.ProjectionStore.
func (s *Store) ClaimUncountedReplays(ctx context.Context, limit int) ([]store.ReplayResult, error) {
	if limit <= 0 {
		limit = 100
	}
	rows, err := s.pool.Query(ctx, `UPDATE khala_replays SET counted = true
		WHERE id IN (SELECT id FROM khala_replays WHERE NOT counted ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
		RETURNING `+replayCols, limit)
	if err != nil {
		return nil, fmt.Errorf("postgres: claim replays: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (store.ReplayResult, error) { return scanReplay(r) })
	if err != nil {
		return nil, fmt.Errorf("postgres: claim replays: %w", err)
	}
	return out, nil
}
