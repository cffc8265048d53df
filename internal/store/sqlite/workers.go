package sqlite

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/oaruntime/oaruntime/internal/runs"
	"github.com/oaruntime/oaruntime/internal/store"
)

var _ store.WorkerStore = (*Store)(nil)

const workerColumns = `worker_id, owner_sub, status, latest_seq, workspace_ref, codex_home_ref, adapter,
	metadata_json, last_heartbeat_at, started_at, stopped_at, stopped_reason, created_at, updated_at`

func scanWorker(row rowScanner) (store.Worker, error) {
	var (
		w                           store.Worker
		meta                        string
		heartbeat, stopped          sql.NullString
		started, createdAt, updated string
	)
	err := row.Scan(&w.WorkerID, &w.OwnerSub, &w.Status, &w.LatestSeq, &w.WorkspaceRef, &w.CodexHomeRef, &w.Adapter,
		&meta, &heartbeat, &started, &stopped, &w.StoppedReason, &createdAt, &updated)
	if err != nil {
		return store.Worker{}, err
	}
	w.Metadata = json.RawMessage(meta)
	if w.LastHeartbeatAt, err = parseNullTS(heartbeat); err != nil {
		return store.Worker{}, err
	}
	if w.StoppedAt, err = parseNullTS(stopped); err != nil {
		return store.Worker{}, err
	}
	if w.StartedAt, err = parseTS(started); err != nil {
		return store.Worker{}, err
	}
	if w.CreatedAt, err = parseTS(createdAt); err != nil {
		return store.Worker{}, err
	}
	if w.UpdatedAt, err = parseTS(updated); err != nil {
		return store.Worker{}, err
	}
	return w, nil
}

const workerEventColumns = `worker_id, seq, event_type, payload, idempotency_key,
	traceparent, tracestate, request_id, created_at`

func scanWorkerEvent(row rowScanner) (store.WorkerEvent, error) {
	var (
		e                  store.WorkerEvent
		payload, createdAt string
	)
	err := row.Scan(&e.WorkerID, &e.Seq, &e.EventType, &payload, &e.IdempotencyKey,
		&e.Trace.TraceParent, &e.Trace.TraceState, &e.Trace.RequestID, &createdAt)
	if err != nil {
		return store.WorkerEvent{}, err
	}
	e.Payload = json.RawMessage(payload)
	if e.CreatedAt, err = parseTS(createdAt); err != nil {
		return store.WorkerEvent{}, err
	}
	return e, nil
}

// workerMetadata canonicalizes metadata; absent and null are {} so that
// they compare equal on a create replay.
func workerMetadata(raw json.RawMessage) (string, error) {
	t := bytes.TrimSpace(raw)
	if len(t) == 0 || bytes.Equal(t, []byte("null")) {
		return "{}", nil
	}
	if t[0] != '{' {
		return "", errors.New("metadata must be a JSON object")
	}
	c, err := runs.CanonicalizeRaw(t)
	if err != nil {
		return "", fmt.Errorf("metadata: %w", err)
	}
	return string(c), nil
}

func getWorkerTx(ctx context.Context, tx *sql.Tx, workerID string) (store.Worker, error) {
	w, err := scanWorker(tx.QueryRowContext(ctx, `SELECT `+workerColumns+` FROM codex_workers WHERE worker_id = ?`, workerID))
	if errors.Is(err, sql.ErrNoRows) {
		return store.Worker{}, fmt.Errorf("worker %s: %w", workerID, store.ErrNotFound)
	}
	if err != nil {
		return store.Worker{}, fmt.Errorf("worker %s: %w", workerID, err)
	}
	return w, nil
}

// CreateWorker implements store.WorkerStore.
func (s *Store) CreateWorker(ctx context.Context, in store.CreateWorkerInput) (store.Worker, string, error) {
	if in.WorkerID == "" {
		return store.Worker{}, "", errors.New("sqlite: create worker: worker_id is required")
	}
	if in.OwnerSub == "" {
		return store.Worker{}, "", errors.New("sqlite: create worker: owner is required")
	}
	meta, err := workerMetadata(in.Metadata)
	if err != nil {
		return store.Worker{}, "", fmt.Errorf("sqlite: create worker %s: %w", in.WorkerID, err)
	}
	var (
		w       store.Worker
		outcome string
	)
	err = s.write(ctx, func(tx *sql.Tx, notify func(store.Notice)) error {
		existing, err := getWorkerTx(ctx, tx, in.WorkerID)
		now := s.now()
		ts := formatTS(now)
		switch {
		case err == nil:
			if existing.OwnerSub != in.OwnerSub || existing.WorkspaceRef != in.WorkspaceRef ||
				existing.CodexHomeRef != in.CodexHomeRef || existing.Adapter != in.Adapter || string(existing.Metadata) != meta {
				return fmt.Errorf("worker %s exists with other fields: %w", in.WorkerID, store.ErrConflict)
			}
			if !store.WorkerEnded(existing.Status) {
				w, outcome = existing, store.WorkerExisting
				return nil
			}
			// A stopped or failed worker created again is the same session
			// coming back: reattach it rather than refuse.
			payload, err := runs.Canonical(map[string]string{"previous_status": existing.Status, "reason": "reattach"})
			if err != nil {
				return err
			}
			seq := existing.LatestSeq + 1
			if err := insertWorkerEvent(ctx, tx, in.WorkerID, seq, store.WorkerEventStarted, string(payload), "", in.Trace, ts); err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, `UPDATE codex_workers SET status = 'starting', latest_seq = ?,
				last_heartbeat_at = NULL, started_at = ?, stopped_at = NULL, stopped_reason = '', updated_at = ?
				WHERE worker_id = ?`, seq, ts, ts, in.WorkerID); err != nil {
				return fmt.Errorf("reattach worker %s: %w", in.WorkerID, err)
			}
			outcome = store.WorkerReattached
			notify(store.Notice{Kind: store.NoticeWorker, RunID: in.WorkerID, Seq: seq})
		case errors.Is(err, store.ErrNotFound):
			if _, err := tx.ExecContext(ctx, `INSERT INTO codex_workers (worker_id, owner_sub, status, latest_seq,
				workspace_ref, codex_home_ref, adapter, metadata_json, started_at, created_at, updated_at)
				VALUES (?, ?, 'starting', 1, ?, ?, ?, ?, ?, ?, ?)`,
				in.WorkerID, in.OwnerSub, in.WorkspaceRef, in.CodexHomeRef, in.Adapter, meta, ts, ts, ts); err != nil {
				return fmt.Errorf("insert worker %s: %w", in.WorkerID, err)
			}
			if err := insertWorkerEvent(ctx, tx, in.WorkerID, 1, store.WorkerEventStarted, `{"reason":"create"}`, "", in.Trace, ts); err != nil {
				return err
			}
			outcome = store.WorkerCreated
			notify(store.Notice{Kind: store.NoticeWorker, RunID: in.WorkerID, Seq: 1})
		default:
			return err
		}
		w, err = getWorkerTx(ctx, tx, in.WorkerID)
		return err
	})
	if err != nil {
		return store.Worker{}, "", fmt.Errorf("sqlite: create worker %s: %w", in.WorkerID, err)
	}
	return w, outcome, nil
}

func insertWorkerEvent(ctx context.Context, tx *sql.Tx, workerID string, seq int64, eventType, payload, key string, tr store.TraceContext, ts string) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO codex_worker_events
		(worker_id, seq, event_type, payload, idempotency_key, traceparent, tracestate, request_id, created_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		workerID, seq, eventType, payload, key, tr.TraceParent, tr.TraceState, tr.RequestID, ts)
	if err != nil {
		return fmt.Errorf("insert %s event %d of worker %s: %w", eventType, seq, workerID, err)
	}
	return nil
}

// GetWorker implements store.WorkerStore.
func (s *Store) GetWorker(ctx context.Context, workerID string) (store.Worker, error) {
	w, err := scanWorker(s.reader.QueryRowContext(ctx, `SELECT `+workerColumns+` FROM codex_workers WHERE worker_id = ?`, workerID))
	if errors.Is(err, sql.ErrNoRows) {
		return store.Worker{}, fmt.Errorf("sqlite: get worker %s: %w", workerID, store.ErrNotFound)
	}
	if err != nil {
		return store.Worker{}, fmt.Errorf("sqlite: get worker %s: %w", workerID, err)
	}
	return w, nil
}

// HeartbeatWorker implements store.WorkerStore.
func (s *Store) HeartbeatWorker(ctx context.Context, workerID string, trace store.TraceContext) (store.Worker, store.WorkerEvent, error) {
	var (
		w  store.Worker
		ev store.WorkerEvent
	)
	err := s.write(ctx, func(tx *sql.Tx, notify func(store.Notice)) error {
		var err error
		ev, _, err = s.appendWorkerTx(ctx, tx, store.WorkerEventInput{
			WorkerID: workerID, EventType: store.WorkerEventHeartbeat, Payload: json.RawMessage(`{}`), Trace: trace,
		}, notify)
		if err != nil {
			return err
		}
		w, err = getWorkerTx(ctx, tx, workerID)
		return err
	})
	if err != nil {
		return store.Worker{}, store.WorkerEvent{}, fmt.Errorf("sqlite: heartbeat worker %s: %w", workerID, err)
	}
	return w, ev, nil
}

// AppendWorkerEvent implements store.WorkerStore.
func (s *Store) AppendWorkerEvent(ctx context.Context, in store.WorkerEventInput) (store.WorkerEvent, bool, error) {
	var (
		ev     store.WorkerEvent
		replay bool
	)
	err := s.write(ctx, func(tx *sql.Tx, notify func(store.Notice)) error {
		var err error
		ev, replay, err = s.appendWorkerTx(ctx, tx, in, notify)
		return err
	})
	if err != nil {
		return store.WorkerEvent{}, false, fmt.Errorf("sqlite: append %s to worker %s: %w", strings.TrimSpace(in.EventType), in.WorkerID, err)
	}
	return ev, replay, nil
}

// appendWorkerTx is one worker-reported event inside the caller's write
// transaction: idempotency replay, transition, insert, worker row.
func (s *Store) appendWorkerTx(ctx context.Context, tx *sql.Tx, in store.WorkerEventInput, notify func(store.Notice)) (store.WorkerEvent, bool, error) {
	eventType := strings.TrimSpace(in.EventType)
	key := strings.TrimSpace(in.IdempotencyKey)
	payload, err := runs.CanonicalizeRaw(in.Payload)
	if err != nil {
		return store.WorkerEvent{}, false, fmt.Errorf("payload: %w", err)
	}
	w, err := getWorkerTx(ctx, tx, in.WorkerID)
	if err != nil {
		return store.WorkerEvent{}, false, err
	}
	if key != "" {
		prev, err := scanWorkerEvent(tx.QueryRowContext(ctx, `SELECT `+workerEventColumns+` FROM codex_worker_events
			WHERE worker_id = ? AND idempotency_key = ?`, in.WorkerID, key))
		switch {
		case err == nil:
			if prev.EventType != eventType || !bytes.Equal(prev.Payload, payload) {
				return store.WorkerEvent{}, false, fmt.Errorf("idempotency_key %q was used for another event: %w", key, store.ErrConflict)
			}
			return prev, true, nil
		case !errors.Is(err, sql.ErrNoRows):
			return store.WorkerEvent{}, false, fmt.Errorf("idempotency lookup: %w", err)
		}
	}
	next, err := store.WorkerTransition(w.Status, eventType)
	if err != nil {
		return store.WorkerEvent{}, false, err
	}
	ts := formatTS(s.now())
	seq := w.LatestSeq + 1
	if err := insertWorkerEvent(ctx, tx, in.WorkerID, seq, eventType, string(payload), key, in.Trace, ts); err != nil {
		return store.WorkerEvent{}, false, err
	}
	if store.WorkerEnded(next) {
		_, err = tx.ExecContext(ctx, `UPDATE codex_workers SET status = ?, latest_seq = ?, last_heartbeat_at = ?,
			stopped_at = ?, stopped_reason = ?, updated_at = ? WHERE worker_id = ?`,
			next, seq, ts, ts, reasonOf(payload), ts, in.WorkerID)
	} else {
		_, err = tx.ExecContext(ctx, `UPDATE codex_workers SET status = ?, latest_seq = ?, last_heartbeat_at = ?,
			updated_at = ? WHERE worker_id = ?`, next, seq, ts, ts, in.WorkerID)
	}
	if err != nil {
		return store.WorkerEvent{}, false, fmt.Errorf("update worker: %w", err)
	}
	ev, err := scanWorkerEvent(tx.QueryRowContext(ctx, `SELECT `+workerEventColumns+` FROM codex_worker_events
		WHERE worker_id = ? AND seq = ?`, in.WorkerID, seq))
	if err != nil {
		return store.WorkerEvent{}, false, fmt.Errorf("read back event: %w", err)
	}
	notify(store.Notice{Kind: store.NoticeWorker, RunID: in.WorkerID, Seq: seq})
	return ev, false, nil
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
	payload, err := runs.Canonical(map[string]string{"reason": reason})
	if err != nil {
		return store.Worker{}, false, fmt.Errorf("sqlite: stop worker %s: %w", workerID, err)
	}
	var (
		w       store.Worker
		stopped bool
	)
	err = s.write(ctx, func(tx *sql.Tx, notify func(store.Notice)) error {
		cur, err := getWorkerTx(ctx, tx, workerID)
		if err != nil {
			return err
		}
		if store.WorkerEnded(cur.Status) {
			w = cur
			return nil
		}
		ts := formatTS(s.now())
		seq := cur.LatestSeq
		if cur.Status != store.WorkerStopping {
			seq++
			if err := insertWorkerEvent(ctx, tx, workerID, seq, store.WorkerEventStopping, string(payload), "", trace, ts); err != nil {
				return err
			}
		}
		seq++
		if err := insertWorkerEvent(ctx, tx, workerID, seq, store.WorkerEventStopped, string(payload), "", trace, ts); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE codex_workers SET status = 'stopped', latest_seq = ?,
			stopped_at = ?, stopped_reason = ?, updated_at = ? WHERE worker_id = ?`,
			seq, ts, reason, ts, workerID); err != nil {
			return fmt.Errorf("update worker: %w", err)
		}
		if w, err = getWorkerTx(ctx, tx, workerID); err != nil {
			return err
		}
		stopped = true
		notify(store.Notice{Kind: store.NoticeWorker, RunID: workerID, Seq: seq})
		return nil
	})
	if err != nil {
		return store.Worker{}, false, fmt.Errorf("sqlite: stop worker %s: %w", workerID, err)
	}
	return w, stopped, nil
}

// ListWorkerEvents implements store.WorkerStore.
func (s *Store) ListWorkerEvents(ctx context.Context, workerID string, afterSeq int64, limit int) ([]store.WorkerEvent, error) {
	if limit <= 0 {
		limit = 100
	}
	rows, err := s.reader.QueryContext(ctx, `SELECT `+workerEventColumns+` FROM codex_worker_events
		WHERE worker_id = ? AND seq > ? ORDER BY seq LIMIT ?`, workerID, afterSeq, limit)
	if err != nil {
		return nil, fmt.Errorf("sqlite: list events of worker %s: %w", workerID, err)
	}
	evs, err := collectWorkerEvents(rows)
	if err != nil {
		return nil, fmt.Errorf("sqlite: list events of worker %s: %w", workerID, err)
	}
	if len(evs) == 0 {
		// Tell "nothing new" from "no such worker" only when it matters.
		if _, err := s.GetWorker(ctx, workerID); err != nil {
			return nil, err
		}
	}
	return evs, nil
}

func collectWorkerEvents(rows *sql.Rows) ([]store.WorkerEvent, error) {
	defer rows.Close()
	var out []store.WorkerEvent
	for rows.Next() {
		e, err := scanWorkerEvent(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

// LoadWorkerLog implements store.WorkerStore. A read transaction on a WAL
// database sees one snapshot for both queries.
func (s *Store) LoadWorkerLog(ctx context.Context, workerID string) (store.Worker, []store.WorkerEvent, error) {
	tx, err := s.reader.BeginTx(ctx, nil)
	if err != nil {
		return store.Worker{}, nil, fmt.Errorf("sqlite: load worker log %s: %w", workerID, err)
	}
	defer func() { _ = tx.Rollback() }()
	w, err := getWorkerTx(ctx, tx, workerID)
	if err != nil {
		return store.Worker{}, nil, fmt.Errorf("sqlite: load worker log: %w", err)
	}
	rows, err := tx.QueryContext(ctx, `SELECT `+workerEventColumns+` FROM codex_worker_events
		WHERE worker_id = ? AND seq <= ? ORDER BY seq`, workerID, w.LatestSeq)
	if err != nil {
		return store.Worker{}, nil, fmt.Errorf("sqlite: load worker log %s: %w", workerID, err)
	}
	evs, err := collectWorkerEvents(rows)
	if err != nil {
		return store.Worker{}, nil, fmt.Errorf("sqlite: load worker log %s: %w", workerID, err)
	}
	return w, evs, nil
}

// ListWorkerIDs implements store.WorkerStore. limit <= 0 means 100.
func (s *Store) ListWorkerIDs(ctx context.Context, afterWorkerID string, limit int) ([]string, error) {
	if limit <= 0 {
		limit = 100
	}
	rows, err := s.reader.QueryContext(ctx, `SELECT worker_id FROM codex_workers WHERE worker_id > ?
		ORDER BY worker_id LIMIT ?`, afterWorkerID, limit)
	if err != nil {
		return nil, fmt.Errorf("sqlite: list worker ids: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("sqlite: list worker ids: %w", err)
		}
		out = append(out, id)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: list worker ids: %w", err)
	}
	return out, nil
}
