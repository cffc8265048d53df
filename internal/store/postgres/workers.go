package postgres

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/oaruntime/oaruntime/internal/runs"
	"github.com/oaruntime/oaruntime/internal/store"
)

var _ store.WorkerStore = (*Store)(nil)

const workerCols = `worker_id, owner_sub, status, latest_seq, workspace_ref, codex_home_ref, adapter,
	metadata, last_heartbeat_at, started_at, stopped_at, stopped_reason, created_at, updated_at`

func scanWorker(row pgx.Row) (store.Worker, error) {
	var (
		w                  store.Worker
		meta               []byte
		heartbeat, stopped *time.Time
	)
	err := row.Scan(&w.WorkerID, &w.OwnerSub, &w.Status, &w.LatestSeq, &w.WorkspaceRef, &w.CodexHomeRef, &w.Adapter,
		&meta, &heartbeat, &w.StartedAt, &stopped, &w.StoppedReason, &w.CreatedAt, &w.UpdatedAt)
	if err != nil {
		return store.Worker{}, err
	}
	w.Metadata = json.RawMessage(meta)
	w.LastHeartbeatAt, w.StoppedAt = utcPtr(heartbeat), utcPtr(stopped)
	w.StartedAt, w.CreatedAt, w.UpdatedAt = w.StartedAt.UTC(), w.CreatedAt.UTC(), w.UpdatedAt.UTC()
	return w, nil
}

const workerEventCols = `worker_id, seq, event_type, payload, COALESCE(idempotency_key, ''),
	traceparent, tracestate, request_id, created_at`

func scanWorkerEvent(row pgx.Row) (store.WorkerEvent, error) {
	var (
		e       store.WorkerEvent
		payload []byte
	)
	err := row.Scan(&e.WorkerID, &e.Seq, &e.EventType, &payload, &e.IdempotencyKey,
		&e.Trace.TraceParent, &e.Trace.TraceState, &e.Trace.RequestID, &e.CreatedAt)
	if err != nil {
		return store.WorkerEvent{}, err
	}
	e.Payload = json.RawMessage(payload)
	e.CreatedAt = e.CreatedAt.UTC()
	return e, nil
}

// workerMetadata canonicalizes metadata; absent and null are {} so that
// they compare equal on a create replay.
func workerMetadata(raw json.RawMessage) ([]byte, error) {
	t := bytes.TrimSpace(raw)
	if len(t) == 0 || bytes.Equal(t, []byte("null")) {
		return []byte("{}"), nil
	}
	if t[0] != '{' {
		return nil, errors.New("metadata must be a JSON object")
	}
	c, err := runs.CanonicalizeRaw(t)
	if err != nil {
		return nil, fmt.Errorf("metadata: %w", err)
	}
	return c, nil
}

// clockNow is the wall clock of the server once the caller holds its row
// lock: now() is frozen at transaction start, so a lock wait would date
// the write (and a heartbeat) in the past.
func clockNow(ctx context.Context, tx pgx.Tx) (time.Time, error) {
	var t time.Time
	if err := tx.QueryRow(ctx, `SELECT clock_timestamp()`).Scan(&t); err != nil {
		return time.Time{}, fmt.Errorf("read clock: %w", err)
	}
	return t.UTC().Truncate(time.Microsecond), nil
}

// lockWorker reads the worker row under a row lock, which serializes every
// write of one worker so that seq = latest_seq+1 is gap-free. NO KEY UPDATE
// leaves the event inserts' FK checks of other transactions unblocked.
func lockWorker(ctx context.Context, tx pgx.Tx, workerID string) (store.Worker, error) {
	w, err := scanWorker(tx.QueryRow(ctx, `SELECT `+workerCols+` FROM codex_workers WHERE worker_id = $1 FOR NO KEY UPDATE`, workerID))
	if errors.Is(err, pgx.ErrNoRows) {
		return store.Worker{}, fmt.Errorf("worker %s: %w", workerID, store.ErrNotFound)
	}
	if err != nil {
		return store.Worker{}, fmt.Errorf("lock worker %s: %w", workerID, err)
	}
	return w, nil
}

func insertWorkerEvent(ctx context.Context, tx pgx.Tx, workerID string, seq int64, eventType string, payload []byte, key string, tr store.TraceContext, ts time.Time) (store.WorkerEvent, error) {
	var keyParam any
	if key != "" {
		keyParam = key
	}
	ev, err := scanWorkerEvent(tx.QueryRow(ctx, `INSERT INTO codex_worker_events
		(worker_id, seq, event_type, payload, idempotency_key, traceparent, tracestate, request_id, created_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
		RETURNING `+workerEventCols,
		workerID, seq, eventType, string(payload), keyParam, tr.TraceParent, tr.TraceState, tr.RequestID, ts))
	if err != nil {
		return store.WorkerEvent{}, fmt.Errorf("insert %s event %d of worker %s: %w", eventType, seq, workerID, err)
	}
	return ev, nil
}

func checkTrace(tr store.TraceContext) error {
	return checkText("traceparent", tr.TraceParent, "tracestate", tr.TraceState, "request_id", tr.RequestID)
}

// CreateWorker implements store.WorkerStore.
func (s *Store) CreateWorker(ctx context.Context, in store.CreateWorkerInput) (store.Worker, string, error) {
	if in.WorkerID == "" {
		return store.Worker{}, "", errors.New("postgres: create worker: worker_id is required")
	}
	if in.OwnerSub == "" {
		return store.Worker{}, "", errors.New("postgres: create worker: owner is required")
	}
	if err := checkText("worker_id", in.WorkerID, "owner", in.OwnerSub, "workspace_ref", in.WorkspaceRef,
		"codex_home_ref", in.CodexHomeRef, "adapter", in.Adapter); err != nil {
		return store.Worker{}, "", fmt.Errorf("postgres: create worker: %w", err)
	}
	if err := checkTrace(in.Trace); err != nil {
		return store.Worker{}, "", fmt.Errorf("postgres: create worker: %w", err)
	}
	meta, err := workerMetadata(in.Metadata)
	if err != nil {
		return store.Worker{}, "", fmt.Errorf("postgres: create worker %s: %w", in.WorkerID, err)
	}
	var (
		w       store.Worker
		outcome string
	)
	err = s.writeTx(ctx, func(tx pgx.Tx, note func(store.Notice)) error {
		ts, err := clockNow(ctx, tx)
		if err != nil {
			return err
		}
		// A concurrent create of the same id waits here for the first to
		// commit, then finds the row and takes the replay path.
		tag, err := tx.Exec(ctx, `INSERT INTO codex_workers (worker_id, owner_sub, status, latest_seq,
			workspace_ref, codex_home_ref, adapter, metadata, started_at, created_at, updated_at)
			VALUES ($1, $2, 'starting', 1, $3, $4, $5, $6, $7, $7, $7)
			ON CONFLICT (worker_id) DO NOTHING`,
			in.WorkerID, in.OwnerSub, in.WorkspaceRef, in.CodexHomeRef, in.Adapter, string(meta), ts)
		if err != nil {
			return fmt.Errorf("insert worker: %w", err)
		}
		if tag.RowsAffected() == 1 {
			if _, err := insertWorkerEvent(ctx, tx, in.WorkerID, 1, store.WorkerEventStarted, []byte(`{"reason":"create"}`), "", in.Trace, ts); err != nil {
				return err
			}
			outcome = store.WorkerCreated
			if w, err = lockWorker(ctx, tx, in.WorkerID); err != nil {
				return err
			}
			note(store.Notice{Kind: store.NoticeWorker, RunID: in.WorkerID, Seq: 1})
			return nil
		}
		existing, err := lockWorker(ctx, tx, in.WorkerID)
		if err != nil {
			return err
		}
		if existing.OwnerSub != in.OwnerSub || existing.WorkspaceRef != in.WorkspaceRef ||
			existing.CodexHomeRef != in.CodexHomeRef || existing.Adapter != in.Adapter || !bytes.Equal(existing.Metadata, meta) {
			return fmt.Errorf("worker %s exists with other fields: %w", in.WorkerID, store.ErrConflict)
		}
		if !store.WorkerEnded(existing.Status) {
			w, outcome = existing, store.WorkerExisting
			return nil
		}
		// A stopped or failed worker created again is the same session
		// coming back: reattach it rather than refuse.
		if ts, err = clockNow(ctx, tx); err != nil {
			return err
		}
		payload, err := runs.Canonical(map[string]string{"previous_status": existing.Status, "reason": "reattach"})
		if err != nil {
			return err
		}
		seq := existing.LatestSeq + 1
		if _, err := insertWorkerEvent(ctx, tx, in.WorkerID, seq, store.WorkerEventStarted, payload, "", in.Trace, ts); err != nil {
			return err
		}
		w, err = scanWorker(tx.QueryRow(ctx, `UPDATE codex_workers SET status = 'starting', latest_seq = $2,
			last_heartbeat_at = NULL, started_at = $3, stopped_at = NULL, stopped_reason = '', updated_at = $3
			WHERE worker_id = $1 RETURNING `+workerCols, in.WorkerID, seq, ts))
		if err != nil {
			return fmt.Errorf("reattach worker: %w", err)
		}
		outcome = store.WorkerReattached
		note(store.Notice{Kind: store.NoticeWorker, RunID: in.WorkerID, Seq: seq})
		return nil
	})
	if err != nil {
		return store.Worker{}, "", fmt.Errorf("postgres: create worker %s: %w", in.WorkerID, err)
	}
	return w, outcome, nil
}

// GetWorker implements store.WorkerStore.
func (s *Store) GetWorker(ctx context.Context, workerID string) (store.Worker, error) {
	if !storable(workerID) {
		return store.Worker{}, fmt.Errorf("postgres: get worker %q: %w", workerID, store.ErrNotFound)
	}
	w, err := scanWorker(s.pool.QueryRow(ctx, `SELECT `+workerCols+` FROM codex_workers WHERE worker_id = $1`, workerID))
	if errors.Is(err, pgx.ErrNoRows) {
		return store.Worker{}, fmt.Errorf("postgres: get worker %s: %w", workerID, store.ErrNotFound)
	}
	if err != nil {
		return store.Worker{}, fmt.Errorf("postgres: get worker %s: %w", workerID, err)
	}
	return w, nil
}

// HeartbeatWorker implements store.WorkerStore.
func (s *Store) HeartbeatWorker(ctx context.Context, workerID string, trace store.TraceContext) (store.Worker, store.WorkerEvent, error) {
	var (
		w  store.Worker
		ev store.WorkerEvent
	)
	err := s.writeTx(ctx, func(tx pgx.Tx, note func(store.Notice)) error {
		var err error
		w, ev, _, err = s.appendWorkerTx(ctx, tx, note, store.WorkerEventInput{
			WorkerID: workerID, EventType: store.WorkerEventHeartbeat, Payload: json.RawMessage(`{}`), Trace: trace,
		})
		return err
	})
	if err != nil {
		return store.Worker{}, store.WorkerEvent{}, fmt.Errorf("postgres: heartbeat worker %s: %w", workerID, err)
	}
	return w, ev, nil
}

// AppendWorkerEvent implements store.WorkerStore.
func (s *Store) AppendWorkerEvent(ctx context.Context, in store.WorkerEventInput) (store.WorkerEvent, bool, error) {
	var (
		ev     store.WorkerEvent
		replay bool
	)
	err := s.writeTx(ctx, func(tx pgx.Tx, note func(store.Notice)) error {
		var err error
		_, ev, replay, err = s.appendWorkerTx(ctx, tx, note, in)
		return err
	})
	if err != nil {
		return store.WorkerEvent{}, false, fmt.Errorf("postgres: append %s to worker %s: %w", strings.TrimSpace(in.EventType), in.WorkerID, err)
	}
	return ev, replay, nil
}

// appendWorkerTx is one worker-reported event inside tx: lock, idempotency
// replay, transition, insert, worker row. It returns the worker after it.
func (s *Store) appendWorkerTx(ctx context.Context, tx pgx.Tx, note func(store.Notice), in store.WorkerEventInput) (store.Worker, store.WorkerEvent, bool, error) {
	eventType := strings.TrimSpace(in.EventType)
	key := strings.TrimSpace(in.IdempotencyKey)
	if !storable(in.WorkerID) {
		return store.Worker{}, store.WorkerEvent{}, false, fmt.Errorf("worker %q: %w", in.WorkerID, store.ErrNotFound)
	}
	if err := checkText("event_type", eventType, "idempotency_key", key); err != nil {
		return store.Worker{}, store.WorkerEvent{}, false, err
	}
	if err := checkTrace(in.Trace); err != nil {
		return store.Worker{}, store.WorkerEvent{}, false, err
	}
	payload, err := runs.CanonicalizeRaw(in.Payload)
	if err != nil {
		return store.Worker{}, store.WorkerEvent{}, false, fmt.Errorf("payload: %w", err)
	}
	w, err := lockWorker(ctx, tx, in.WorkerID)
	if err != nil {
		return store.Worker{}, store.WorkerEvent{}, false, err
	}
	if key != "" {
		prev, err := scanWorkerEvent(tx.QueryRow(ctx, `SELECT `+workerEventCols+` FROM codex_worker_events
			WHERE worker_id = $1 AND idempotency_key = $2`, in.WorkerID, key))
		switch {
		case err == nil:
			if prev.EventType != eventType || !bytes.Equal(prev.Payload, payload) {
				return store.Worker{}, store.WorkerEvent{}, false, fmt.Errorf("idempotency_key %q was used for another event: %w", key, store.ErrConflict)
			}
			return w, prev, true, nil
		case !errors.Is(err, pgx.ErrNoRows):
			return store.Worker{}, store.WorkerEvent{}, false, fmt.Errorf("idempotency lookup: %w", err)
		}
	}
	next, err := store.WorkerTransition(w.Status, eventType)
	if err != nil {
		return store.Worker{}, store.WorkerEvent{}, false, err
	}
	ts, err := clockNow(ctx, tx)
	if err != nil {
		return store.Worker{}, store.WorkerEvent{}, false, err
	}
	seq := w.LatestSeq + 1
	ev, err := insertWorkerEvent(ctx, tx, in.WorkerID, seq, eventType, payload, key, in.Trace, ts)
	if err != nil {
		return store.Worker{}, store.WorkerEvent{}, false, err
	}
	ended := store.WorkerEnded(next)
	reason := ""
	if ended {
		reason = reasonOf(payload)
		if !storable(reason) {
			reason = strings.ToValidUTF8(strings.ReplaceAll(reason, "\x00", ""), "\uFFFD")
		}
	}
	w, err = scanWorker(tx.QueryRow(ctx, `UPDATE codex_workers SET
			status = $2, latest_seq = $3, last_heartbeat_at = $4,
			stopped_at     = CASE WHEN $5 THEN $4 ELSE stopped_at END,
			stopped_reason = CASE WHEN $5 THEN $6 ELSE stopped_reason END,
			updated_at = $4
		WHERE worker_id = $1 RETURNING `+workerCols,
		in.WorkerID, next, seq, ts, ended, reason))
	if err != nil {
		return store.Worker{}, store.WorkerEvent{}, false, fmt.Errorf("update worker: %w", err)
	}
	note(store.Notice{Kind: store.NoticeWorker, RunID: in.WorkerID, Seq: seq})
	return w, ev, false, nil
}

// reasonOf is payload.reason when it is a string.
func reasonOf(payload []byte) string {
	var p struct {
		Reason any `json:"reason"`
	}
	if json.Unmarshal(payload, &p) != nil {
		return ""
	}
	r, _ := p.Reason.(string)
	return r
}

// StopWorker implements store.WorkerStore.
func (s *Store) StopWorker(ctx context.Context, workerID, reason string, trace store.TraceContext) (store.Worker, bool, error) {
	reason = strings.TrimSpace(reason)
	if reason == "" {
		reason = store.DefaultStopReason
	}
	if !storable(workerID) {
		return store.Worker{}, false, fmt.Errorf("postgres: stop worker %q: %w", workerID, store.ErrNotFound)
	}
	if err := checkText("reason", reason); err != nil {
		return store.Worker{}, false, fmt.Errorf("postgres: stop worker %s: %w", workerID, err)
	}
	if err := checkTrace(trace); err != nil {
		return store.Worker{}, false, fmt.Errorf("postgres: stop worker %s: %w", workerID, err)
	}
	payload, err := runs.Canonical(map[string]string{"reason": reason})
	if err != nil {
		return store.Worker{}, false, fmt.Errorf("postgres: stop worker %s: %w", workerID, err)
	}
	var (
		w       store.Worker
		stopped bool
	)
	err = s.writeTx(ctx, func(tx pgx.Tx, note func(store.Notice)) error {
		cur, err := lockWorker(ctx, tx, workerID)
		if err != nil {
			return err
		}
		if store.WorkerEnded(cur.Status) {
			w = cur
			return nil
		}
		ts, err := clockNow(ctx, tx)
		if err != nil {
			return err
		}
		seq := cur.LatestSeq
		if cur.Status != store.WorkerStopping {
			seq++
			if _, err := insertWorkerEvent(ctx, tx, workerID, seq, store.WorkerEventStopping, payload, "", trace, ts); err != nil {
				return err
			}
		}
		seq++
		if _, err := insertWorkerEvent(ctx, tx, workerID, seq, store.WorkerEventStopped, payload, "", trace, ts); err != nil {
			return err
		}
		w, err = scanWorker(tx.QueryRow(ctx, `UPDATE codex_workers SET status = 'stopped', latest_seq = $2,
			stopped_at = $3, stopped_reason = $4, updated_at = $3 WHERE worker_id = $1 RETURNING `+workerCols,
			workerID, seq, ts, reason))
		if err != nil {
			return fmt.Errorf("update worker: %w", err)
		}
		stopped = true
		note(store.Notice{Kind: store.NoticeWorker, RunID: workerID, Seq: seq})
		return nil
	})
	if err != nil {
		return store.Worker{}, false, fmt.Errorf("postgres: stop worker %s: %w", workerID, err)
	}
	return w, stopped, nil
}

// ListWorkerEvents implements store.WorkerStore.
func (s *Store) ListWorkerEvents(ctx context.Context, workerID string, afterSeq int64, limit int) ([]store.WorkerEvent, error) {
	if limit <= 0 {
		limit = 100
	}
	if !storable(workerID) {
		return nil, fmt.Errorf("postgres: list events of worker %q: %w", workerID, store.ErrNotFound)
	}
	rows, err := s.pool.Query(ctx, `SELECT `+workerEventCols+` FROM codex_worker_events
		WHERE worker_id = $1 AND seq > $2 ORDER BY seq LIMIT $3`, workerID, afterSeq, limit)
	if err != nil {
		return nil, fmt.Errorf("postgres: list events of worker %s: %w", workerID, err)
	}
	evs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (store.WorkerEvent, error) { return scanWorkerEvent(r) })
	if err != nil {
		return nil, fmt.Errorf("postgres: list events of worker %s: %w", workerID, err)
	}
	if len(evs) == 0 {
		// Tell "nothing new" from "no such worker" only when it matters.
		if _, err := s.GetWorker(ctx, workerID); err != nil {
			return nil, err
		}
	}
	return evs, nil
}

// LoadWorkerLog implements store.WorkerStore from one REPEATABLE READ snapshot.
func (s *Store) LoadWorkerLog(ctx context.Context, workerID string) (store.Worker, []store.WorkerEvent, error) {
	if !storable(workerID) {
		return store.Worker{}, nil, fmt.Errorf("postgres: load worker log %q: %w", workerID, store.ErrNotFound)
	}
	var (
		w   store.Worker
		evs []store.WorkerEvent
	)
	err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		var err error
		w, err = scanWorker(tx.QueryRow(ctx, `SELECT `+workerCols+` FROM codex_workers WHERE worker_id = $1`, workerID))
		if errors.Is(err, pgx.ErrNoRows) {
			return store.ErrNotFound
		}
		if err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `SELECT `+workerEventCols+` FROM codex_worker_events
			WHERE worker_id = $1 AND seq <= $2 ORDER BY seq`, workerID, w.LatestSeq)
		if err != nil {
			return err
		}
		evs, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (store.WorkerEvent, error) { return scanWorkerEvent(r) })
		return err
	})
	if err != nil {
		return store.Worker{}, nil, fmt.Errorf("postgres: load worker log %s: %w", workerID, err)
	}
	return w, evs, nil
}

// ListWorkerIDs implements store.WorkerStore. limit <= 0 means 100.
func (s *Store) ListWorkerIDs(ctx context.Context, afterWorkerID string, limit int) ([]string, error) {
	if limit <= 0 {
		limit = 100
	}
	if !storable(afterWorkerID) {
		return nil, fmt.Errorf("postgres: list worker ids: after id contains NUL or invalid UTF-8")
	}
	rows, err := s.pool.Query(ctx, `SELECT worker_id FROM codex_workers WHERE worker_id > $1
		ORDER BY worker_id LIMIT $2`, afterWorkerID, limit)
	if err != nil {
		return nil, fmt.Errorf("postgres: list worker ids: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("postgres: list worker ids: %w", err)
	}
	return ids, nil
}
